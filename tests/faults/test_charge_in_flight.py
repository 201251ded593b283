"""Fault: a charge request held on the way to Stripe past the client's timeout (issue 12, item 4).

A delaying TCP proxy (tests/faults/tcp_proxy.py) sits between the Stripe SDK and a real localstripe
and holds ``POST /v1/payment_intents`` for longer than the client's read timeout; real billing passes
run while the request is still held. The invariant, read from localstripe's own state: exactly one
successful charge per paid invoice (a second one only refunded in full) and none for an unpaid one.

Timeouts and the quiet period are shrunk through settings (client: 1 s to connect, 1 s to read;
quiet period a few seconds), so each test takes seconds. Every wait is bounded.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone

from accounts.models import AuditEntry
from accounts.selectors import team_for_user
from billing import checkout, customers, run
from billing.models import ExtraCharge, Invoice, Payment
from config.celery import app as celery_app
from tests.billing.billing_engine_helpers import payment_intents_for_invoice
from tests.faults.tcp_proxy import DelayingProxy
from tests.stripe_fixtures import localstripe_request
from tiers.models import Subscription, Tier
from tiers.services import user_create

pytestmark = pytest.mark.django_db(transaction=True)

JAN_31 = datetime(2026, 1, 31, 10, tzinfo=UTC)
FEB_28 = datetime(2026, 2, 28, 10, tzinfo=UTC)
CREATE = ("POST", "/v1/payment_intents")
CONNECT_TIMEOUT, READ_TIMEOUT = 1.0, 1.0  # the client waits at most 2 s for one request
WAIT_SECONDS = 30  # bound of every wait below, and of a hold the test forgets to release
QUIET = 20  # the first test's quiet period: longer than its three passes take


@pytest.fixture
def team_tier(catalog) -> Tier:
    tier = Tier(slug="team", name="Team", price_cents=5_000, monthly_tokens=10_000_000, sort_order=25)
    tier.full_clean()
    tier.save()
    return tier


def renewal_due(tier: Tier, email: str, *, card: str = "pm_card_visa") -> Invoice:
    """A team that subscribed on Jan 31 (charged straight at localstripe) and whose renewal invoice for
    Feb 28 is issued (the billing pass's local part), with ``card`` on file for it."""
    team = team_for_user(user=user_create(email=email, password="correct-horse-battery-9"))
    assert checkout.subscription_change(team=team, tier=tier, payment_method="pm_card_visa", now=JAN_31).invoice
    if card != "pm_card_visa":
        customers.payment_method_update(team=team, payment_method=card, now=JAN_31)
    run.billing_periods_close(now=FEB_28)
    return Invoice.objects.get(team=team, kind=Invoice.Kind.RENEWAL)


def through_proxy(settings, stripe_local: str, *, hold_seconds: float, quiet_seconds: float, hold_if) -> DelayingProxy:
    host, port = stripe_local.removeprefix("http://").split(":")
    proxy = DelayingProxy((host, int(port)), hold_seconds=hold_seconds, hold_if=hold_if)
    settings.STRIPE_API_BASE = proxy.url
    settings.STRIPE_CONNECT_TIMEOUT_SECONDS = CONNECT_TIMEOUT
    settings.STRIPE_READ_TIMEOUT_SECONDS = READ_TIMEOUT
    settings.TIERLAB_PAYMENT_QUIET_SECONDS = quiet_seconds
    return proxy


def charges_of(stripe_local: str, invoice: Invoice) -> tuple[int, int]:
    """(succeeded PaymentIntents, of which refunded in full) for ``invoice``, as localstripe has them.
    Its customer too, not only its id: localstripe lives for the whole session, and an earlier test's
    invoice may have had the same id (SQLite reuses ids once a transactional test empties a table)."""
    customer = invoice.team.billing_customer.stripe_customer_id
    succeeded = [
        pi
        for pi in payment_intents_for_invoice(stripe_local, invoice.pk)
        if pi["status"] == "succeeded" and pi.get("customer") == customer
    ]
    refunded = 0
    for pi in succeeded:
        refunds = json.loads(localstripe_request(stripe_local, "GET", f"/v1/refunds?payment_intent={pi['id']}"))
        if sum(r["amount"] for r in refunds["data"] if r["status"] == "succeeded") >= pi["amount"]:
            refunded += 1
    return len(succeeded), refunded


def wait_until_quiet(payments: list[Payment]) -> None:
    """Sleep until the quiet period of every one of ``payments`` (as stored now) is over."""
    until = max(Payment.objects.filter(pk__in=[p.pk for p in payments]).values_list("quiet_until", flat=True))
    time.sleep(max(0.0, (until - timezone.now()).total_seconds()) + 0.1)


def test_a_charge_held_past_the_client_timeout_is_never_sent_again(settings, stripe_local, team_tier, report):
    paid = [renewal_due(team_tier, f"paid{i}@example.com") for i in (1, 2)]
    unpaid = renewal_due(team_tier, "unpaid@example.com", card="pm_card_chargeCustomerFail")
    invoices = [*paid, unpaid]
    mail.outbox.clear()
    # Held until released (after pass 3): past the client's 1 s read timeout, inside the quiet period
    # (20 s: three passes fit in it with a wide margin, even on a loaded machine).
    proxy = through_proxy(
        settings, stripe_local, hold_seconds=WAIT_SECONDS, quiet_seconds=QUIET, hold_if=lambda *r: r == CREATE
    )

    with proxy:
        # Pass 1 sends the first charge, which the proxy holds; pass 2 runs while it is held.
        first: list[object] = []

        def billing_pass_1() -> None:
            try:
                first.append(run.billing_run(now=FEB_28))
            finally:
                connection.close()  # this thread's own connection

        pass_1 = threading.Thread(target=billing_pass_1, daemon=True)
        pass_1.start()
        assert proxy.wait_until(lambda: len(proxy.seen(*CREATE)) >= 1, WAIT_SECONDS)
        second = run.billing_run(now=FEB_28)
        pass_1.join(WAIT_SECONDS)
        assert not pass_1.is_alive() and first, "billing pass 1 did not finish"

        # Each invoice was sent once, every answer lost; all three are pending, their outcome unknown.
        sent = proxy.seen(*CREATE)
        assert sorted(r.headers["idempotency-key"] for r in sent) == sorted(
            f"invoice:{invoice.pk}:attempt:1" for invoice in invoices
        )
        assert first[0].payments_attempted + second.payments_attempted == 3
        assert first[0].errors and second.errors
        renewals = Payment.objects.filter(invoice__in=invoices).order_by("invoice_id")
        assert list(renewals.values_list("invoice_id", "attempt", "status")) == [
            (invoice.pk, 1, "pending") for invoice in invoices
        ]

        # Pass 3 while the requests are still held on the way: nothing looked up, nothing sent again.
        assert any(r.forwarded_at is None for r in proxy.seen(*CREATE))
        third = run.billing_run(now=FEB_28 + timedelta(minutes=1))
        assert (third.payments_attempted, third.payments_succeeded, third.errors) == (0, 0, [])
        assert len(proxy.seen(*CREATE)) == 3

        # The held requests reach localstripe after all: the charges happen now, unknown to us.
        proxy.release()
        assert proxy.wait_until(lambda: all(r.answered_at for r in proxy.seen(*CREATE)), WAIT_SECONDS)
        assert [charges_of(stripe_local, invoice) for invoice in invoices] == [(1, 0), (1, 0), (0, 0)]
        assert renewals.filter(status=Payment.Status.PENDING).count() == 3

        # After the quiet period, a pass looks them up and settles them: found, not charged again.
        wait_until_quiet(list(renewals))
        fourth = run.billing_run(now=FEB_28 + timedelta(minutes=2))
        assert (fourth.payments_attempted, fourth.payments_succeeded, fourth.payments_failed) == (0, 2, 1)
        assert fourth.errors == []
        fifth = run.billing_run(now=FEB_28 + timedelta(minutes=3))
        assert (fifth.payments_attempted, fifth.payments_succeeded, fifth.errors) == (0, 0, [])
        assert len(proxy.seen(*CREATE)) == 3

    report(
        f"\ncharges held through 3 passes (client timeout {READ_TIMEOUT} s, quiet period {QUIET} s): "
        f"{len(sent)} creates sent for {len(invoices)} invoices; charges per invoice (succeeded, refunded) "
        f"{[charges_of(stripe_local, invoice) for invoice in invoices]}"
    )
    # Exactly one successful charge per paid invoice, none for the unpaid one; nothing to refund.
    for invoice in paid:
        invoice.refresh_from_db()
        assert invoice.status == Invoice.Status.PAID and charges_of(stripe_local, invoice) == (1, 0)
        assert list(invoice.payments.values_list("attempt", "status")) == [(1, "succeeded")]
    unpaid.refresh_from_db()
    assert unpaid.status == Invoice.Status.OPEN and charges_of(stripe_local, unpaid) == (0, 0)
    assert Subscription.objects.get(pk=unpaid.subscription_id).status == Subscription.Status.PAST_DUE
    assert not ExtraCharge.objects.exists()
    assert not AuditEntry.objects.filter(action=AuditEntry.Action.DUPLICATE_CHARGE).exists()
    receipts = sorted(m.subject for m in mail.outbox if "Receipt" in m.subject)
    assert receipts == sorted(f"[TierLab] Receipt for invoice {i.number} ($50.00)" for i in paid)


@pytest.fixture
def celery_eager(monkeypatch):
    """The webhook's processing task runs in the live server's thread, at once."""
    monkeypatch.setattr(celery_app.conf, "task_always_eager", True)


def test_a_charge_held_past_the_quiet_period_is_refunded_once(
    settings, stripe_local, team_tier, live_server, stripe_webhooks_to, celery_eager, report
):
    invoice = renewal_due(team_tier, "held@example.com")
    mail.outbox.clear()
    stripe_webhooks_to(live_server.url)
    # Only the first charge is held, until released after the re-send: longer than the 3 s quiet period,
    # so the look-up after it finds nothing and the attempt is sent again; then the held one lands too.
    holds = iter([True])
    proxy = through_proxy(
        settings,
        stripe_local,
        hold_seconds=WAIT_SECONDS,
        quiet_seconds=3,
        hold_if=lambda *r: r == CREATE and next(holds, False),
    )

    with proxy:
        first = run.billing_run(now=FEB_28)
        assert (first.payments_attempted, first.payments_succeeded) == (1, 0) and first.errors
        [payment] = Payment.objects.filter(invoice=invoice)
        assert run.billing_run(now=FEB_28).payments_attempted == 0  # in flight: left alone

        wait_until_quiet([payment])
        assert proxy.seen(*CREATE)[0].forwarded_at is None  # still held
        second = run.billing_run(now=FEB_28 + timedelta(minutes=1))
        assert (second.payments_attempted, second.payments_succeeded, second.errors) == (1, 1, [])
        invoice.refresh_from_db()
        assert invoice.status == Invoice.Status.PAID
        keys = [r.headers["idempotency-key"] for r in proxy.seen(*CREATE)]
        assert keys == [f"invoice:{invoice.pk}:attempt:1"] * 2  # the same attempt, the same key

        # The held request lands: localstripe (which ignores idempotency keys) charges a second time.
        proxy.release()
        assert proxy.wait_until(lambda: all(r.answered_at for r in proxy.seen(*CREATE)), WAIT_SECONDS)
        assert charges_of(stripe_local, invoice)[0] == 2
        # Its payment_intent.succeeded webhook finds the second charge; it is refunded automatically.
        deadline = time.monotonic() + WAIT_SECONDS
        while not ExtraCharge.objects.filter(status=ExtraCharge.Status.REFUNDED).exists():
            assert time.monotonic() < deadline, "the second charge was not refunded by its webhook"
            time.sleep(0.2)
        # The look-up of the re-sent attempt once its quiet period is over finds it too: refunded once.
        wait_until_quiet([payment])
        third = run.billing_run(now=FEB_28 + timedelta(minutes=2))
        assert (third.payments_attempted, third.errors) == (0, [])
        assert Payment.objects.get(pk=payment.pk).quiet_until is None  # checked: nothing left to look for

    succeeded, refunded = charges_of(stripe_local, invoice)
    report(
        f"\ncharge held past the quiet period (3 s): {len(proxy.seen(*CREATE))} creates; "
        f"succeeded PaymentIntents {succeeded}, refunded in full {refunded}"
    )
    assert (succeeded, refunded) == (2, 1)  # exactly one charge kept
    [extra] = ExtraCharge.objects.all()
    payment.refresh_from_db()
    assert extra.stripe_payment_intent_id != payment.stripe_payment_intent_id  # the late one is given back
    assert (extra.reason, extra.amount_cents, extra.payment_id) == ("duplicate", 5_000, payment.pk)
    refunds = json.loads(
        localstripe_request(stripe_local, "GET", f"/v1/refunds?payment_intent={extra.stripe_payment_intent_id}")
    )["data"]
    assert [r["id"] for r in refunds] == [extra.stripe_refund_id]
    [duplicate] = AuditEntry.objects.filter(action=AuditEntry.Action.DUPLICATE_CHARGE)
    assert extra.stripe_payment_intent_id in duplicate.description and invoice.number in duplicate.description
    [refund_entry] = AuditEntry.objects.filter(action=AuditEntry.Action.REFUND)
    assert refund_entry.data["stripe_refund_id"] == extra.stripe_refund_id and refund_entry.actor is None
    assert payment.amount_refunded_cents == 0  # the charge that paid the invoice is kept whole
    assert [m.subject for m in mail.outbox if "Receipt" in m.subject] == [
        f"[TierLab] Receipt for invoice {invoice.number} ($50.00)"
    ]
