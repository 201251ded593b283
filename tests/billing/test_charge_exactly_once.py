"""Charging exactly once when a charge's outcome is unknown (billing/payments.py, billing/extra_charges.py),
against a real localstripe: the quiet period after a send, the look-up after it, and the automatic
refund of a second charge found by its webhook or by a look-up.

"A request that lands late" is made for real: a PaymentIntent created at localstripe with the
attempt's metadata behind the engine's back, as the held request would create it. The end-to-end
version with a delaying proxy is tests/faults/test_charge_in_flight.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail
from django.utils import timezone

from accounts.models import AuditEntry
from accounts.selectors import team_for_user
from billing import checkout, customers, extra_charges, payments, run, services
from billing import stripe_gateway as gateway
from billing.models import BillingCustomer, ExtraCharge, Invoice, Payment
from tests.billing.billing_engine_helpers import payment_intents_for_invoice, subscription_of
from tests.helpers_celery import closed_loopback_port
from tests.stripe_fixtures import localstripe_request
from tiers.models import Tier
from tiers.services import user_create

pytestmark = pytest.mark.django_db(transaction=True)

JAN_31 = datetime(2026, 1, 31, 10, tzinfo=UTC)
FEB_28 = datetime(2026, 2, 28, 10, tzinfo=UTC)
_emails = iter(range(1, 10_000))


@pytest.fixture
def team_tier(catalog) -> Tier:
    tier = Tier(slug="team", name="Team", price_cents=5_000, monthly_tokens=10_000_000, sort_order=25)
    tier.full_clean()
    tier.save()
    return tier


def new_team():
    return team_for_user(user=user_create(email=f"once{next(_emails)}@example.com", password="correct-horse-9x"))


def subscribed(tier: Tier):
    team = new_team()
    assert checkout.subscription_change(team=team, tier=tier, payment_method="pm_card_visa", now=JAN_31).invoice
    mail.outbox.clear()
    return team


def land_late(payment: Payment, *, payment_method: str | None = None) -> gateway.PaymentIntentResult:
    """What a request of ``payment`` held on the way does when it finally reaches Stripe."""
    invoice = payment.invoice
    customer = BillingCustomer.objects.get(team_id=invoice.team_id)
    return gateway.payment_intent_create(
        customer_id=customer.stripe_customer_id,
        payment_method_id=payment_method or customer.default_payment_method_id,
        amount_cents=payment.amount_cents,
        currency=payment.currency,
        metadata={"invoice_id": str(invoice.pk), "attempt": str(payment.attempt), "team_id": str(invoice.team_id)},
        idempotency_key=payment.idempotency_key,
    )


def quiet_over(model, pk: int) -> None:
    """Its quiet period (wall clock) is over: what waiting it out would do."""
    model.objects.filter(pk=pk).update(quiet_until=timezone.now() - timedelta(seconds=1))


def refunds_at_stripe(base_url: str, payment_intent_id: str) -> list[dict]:
    return json.loads(localstripe_request(base_url, "GET", f"/v1/refunds?payment_intent={payment_intent_id}"))["data"]


# --- The quiet period -----------------------------------------------------------------------------------------


def test_an_answered_charge_leaves_nothing_to_check_again(team_tier, stripe_local):
    team = subscribed(team_tier)
    run.billing_run(now=FEB_28)
    # The answer to an attempt's only send settles it: nothing of it can still be on its way.
    assert list(Payment.objects.filter(invoice__team=team).values_list("status", "quiet_until")) == [
        ("succeeded", None),
        ("succeeded", None),
    ]


def test_an_unanswered_charge_is_left_alone_for_the_quiet_period_then_looked_up_before_it_is_sent_again(
    team_tier, stripe_local, settings
):
    team = subscribed(team_tier)
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{closed_loopback_port()}"
    run.billing_run(now=FEB_28)
    [payment] = Payment.objects.filter(invoice__team=team, invoice__kind=Invoice.Kind.RENEWAL)
    quiet = gateway.charge_quiet_period()
    assert payment.status == "pending" and payment.quiet_until > timezone.now() + quiet - timedelta(seconds=30)

    settings.STRIPE_API_BASE = stripe_local
    # Stripe answers again, but the attempt's request may still be on its way: no look-up, no send.
    again = run.billing_run(now=FEB_28 + timedelta(days=1))
    assert (again.payments_attempted, again.payments_succeeded, again.errors) == (0, 0, [])
    assert payment_intents_for_invoice(stripe_local, payment.invoice_id) == []

    quiet_over(Payment, payment.pk)
    after = run.billing_run(now=FEB_28 + timedelta(days=1))
    assert (after.payments_attempted, after.payments_succeeded) == (1, 1)  # not found, so sent again
    payment.refresh_from_db()
    assert (payment.attempt, payment.status) == (1, "succeeded")
    # Sent twice: its quiet period stays, for one more look-up when it ends.
    assert payment.quiet_until > timezone.now()
    assert len(payment_intents_for_invoice(stripe_local, payment.invoice_id)) == 1


# --- A second charge, found and refunded ----------------------------------------------------------------------


def test_a_second_charge_found_by_its_webhook_is_refunded_once(team_tier, stripe_local):
    team = subscribed(team_tier)
    [payment] = Payment.objects.filter(invoice__team=team)
    late = land_late(payment)
    assert late.succeeded and late.id != payment.stripe_payment_intent_id

    # What the payment_intent.succeeded webhook does with it (billing.webhooks._apply); twice (a replay).
    payments.payment_outcome_record(intent=late)
    payments.payment_outcome_record(intent=late)

    [extra] = ExtraCharge.objects.all()
    assert (extra.status, extra.reason, extra.payment_id, extra.amount_cents) == (
        "refunded",
        "duplicate",
        payment.pk,
        5_000,
    )
    [refund] = refunds_at_stripe(stripe_local, late.id)
    assert (refund["id"], refund["amount"]) == (extra.stripe_refund_id, 5_000)
    assert refunds_at_stripe(stripe_local, payment.stripe_payment_intent_id) == []  # the one that paid is kept
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded_cents) == ("succeeded", 0)
    assert Invoice.objects.get(pk=payment.invoice_id).status == "paid"
    [found] = AuditEntry.objects.filter(team=team, action=AuditEntry.Action.DUPLICATE_CHARGE)
    assert late.id in found.description and found.data["extra_charge_id"] == extra.pk
    [refunded] = AuditEntry.objects.filter(team=team, action=AuditEntry.Action.REFUND)
    assert refunded.data["stripe_refund_id"] == extra.stripe_refund_id and refunded.actor is None
    assert mail.outbox == []  # no second receipt


def test_a_second_charge_found_by_looking_up_a_re_sent_attempt_is_refunded(team_tier, stripe_local):
    team = subscribed(team_tier)
    run.billing_periods_close(now=FEB_28)
    invoice = Invoice.objects.get(team=team, kind=Invoice.Kind.RENEWAL)
    # The first send never got an answer (its process died); after the quiet period it is sent again.
    with payments.transaction.atomic():
        payment = payments.payment_start(invoice=Invoice.objects.select_for_update().get(pk=invoice.pk), now=FEB_28)
    quiet_over(Payment, payment.pk)
    assert run.billing_run(now=FEB_28).payments_succeeded == 1
    payment.refresh_from_db()
    paid_by = payment.stripe_payment_intent_id
    # ... and then the first request lands after all.
    late = land_late(payment)
    assert run.billing_run(now=FEB_28).errors == []  # the re-send's quiet period is not over: not checked yet
    assert not ExtraCharge.objects.exists()

    quiet_over(Payment, payment.pk)
    assert run.billing_run(now=FEB_28 + timedelta(minutes=5)).errors == []

    [extra] = ExtraCharge.objects.all()
    assert (extra.stripe_payment_intent_id, extra.status) == (late.id, "refunded")
    assert [r["id"] for r in refunds_at_stripe(stripe_local, late.id)] == [extra.stripe_refund_id]
    assert refunds_at_stripe(stripe_local, paid_by) == []
    payment.refresh_from_db()
    assert (payment.stripe_payment_intent_id, payment.quiet_until) == (paid_by, None)  # checked, done
    assert AuditEntry.objects.filter(team=team, action=AuditEntry.Action.DUPLICATE_CHARGE).count() == 1
    assert [m.subject for m in mail.outbox if "Receipt" in m.subject] == [
        f"[TierLab] Receipt for invoice {invoice.number} ($50.00)"
    ]


def test_a_checkout_charge_that_lands_after_its_invoice_was_voided_is_refunded(team_tier, stripe_local, settings):
    team = new_team()
    customers.payment_method_update(team=team, payment_method="pm_card_visa", now=JAN_31)
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{closed_loopback_port()}"
    with pytest.raises(gateway.PaymentProviderUnavailable):
        checkout.subscription_change(team=team, tier=team_tier, now=JAN_31)
    settings.STRIPE_API_BASE = stripe_local
    # Trying again while the first charge may still be on its way is refused, not charged.
    with pytest.raises(services.BillingError) as refused:
        checkout.subscription_change(team=team, tier=team_tier, now=JAN_31 + timedelta(minutes=1))
    assert refused.value.code == "payment_in_progress"

    [payment] = Payment.objects.filter(invoice__team=team)
    quiet_over(Payment, payment.pk)
    run.billing_run(now=JAN_31 + timedelta(minutes=2))  # not found at Stripe: never sent, voided
    invoice = Invoice.objects.get(pk=payment.invoice_id)
    assert invoice.status == "void" and subscription_of(team).tier.slug == "free"

    late = land_late(Payment.objects.get(pk=payment.pk))
    payments.payment_outcome_record(intent=late)  # its webhook

    [extra] = ExtraCharge.objects.all()
    assert (extra.reason, extra.status, extra.stripe_payment_intent_id) == ("invoice_closed", "refunded", late.id)
    assert [r["amount"] for r in refunds_at_stripe(stripe_local, late.id)] == [5_000]
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded_cents) == ("succeeded", 5_000)
    assert Invoice.objects.get(pk=invoice.pk).status == "void" and subscription_of(team).tier.slug == "free"
    assert AuditEntry.objects.filter(team=team, action=AuditEntry.Action.PAYMENT_ON_CLOSED_INVOICE).count() == 1


def test_a_late_charge_of_a_failed_attempt_pays_its_open_invoice(team_tier, stripe_local):
    team = subscribed(team_tier)
    customers.payment_method_update(team=team, payment_method="pm_card_chargeCustomerFail", now=JAN_31)
    run.billing_run(now=FEB_28)
    [payment] = Payment.objects.filter(invoice__team=team, invoice__kind=Invoice.Kind.RENEWAL)
    assert payment.status == "failed" and subscription_of(team).status == "past_due"
    # The same attempt, charged by a request that landed late with a card that works.
    card = gateway.payment_method_attach(
        customer_id=BillingCustomer.objects.get(team=team).stripe_customer_id, payment_method="pm_card_visa"
    )
    late = land_late(payment, payment_method=card.payment_method_id)

    payments.payment_outcome_record(intent=late)

    payment.refresh_from_db()
    assert (payment.status, payment.stripe_payment_intent_id) == ("succeeded", late.id)
    assert Invoice.objects.get(pk=payment.invoice_id).status == "paid"
    assert subscription_of(team).status == "active"
    assert not ExtraCharge.objects.exists()


# --- The refund itself, exactly once ----------------------------------------------------------------------------


@pytest.mark.parametrize("refunded_before", [False, True], ids=["not-made", "answer-lost"])
def test_a_refund_that_failed_is_retried_by_the_billing_pass_and_made_once(
    team_tier, stripe_local, settings, refunded_before
):
    team = subscribed(team_tier)
    [payment] = Payment.objects.filter(invoice__team=team)
    late = land_late(payment)
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{closed_loopback_port()}"
    payments.payment_outcome_record(intent=late)  # found; its refund cannot be sent now
    [extra] = ExtraCharge.objects.all()
    assert extra.status == "pending" and extra.quiet_until > timezone.now()
    settings.STRIPE_API_BASE = stripe_local
    if refunded_before:  # the request did refund, its answer was lost
        gateway.refund_create(payment_intent_id=late.id, amount_cents=5_000, idempotency_key="lost")
    assert extra_charges.extra_charges_refund_pending() == 0  # in its quiet period: left alone

    quiet_over(ExtraCharge, extra.pk)
    assert run.billing_run(now=FEB_28 - timedelta(days=1)).errors == []

    extra.refresh_from_db()
    assert extra.status == "refunded"
    assert [r["id"] for r in refunds_at_stripe(stripe_local, late.id)] == [extra.stripe_refund_id]
    assert run.billing_run(now=FEB_28 - timedelta(days=1)).errors == []
    assert len(refunds_at_stripe(stripe_local, late.id)) == 1


def test_a_refund_stripe_refuses_is_failed_and_written_down(team_tier, stripe_local):
    team = subscribed(team_tier)
    [payment] = Payment.objects.filter(invoice__team=team)
    failing = gateway.payment_method_attach(
        customer_id=BillingCustomer.objects.get(team=team).stripe_customer_id,
        payment_method="pm_card_chargeCustomerFail",
    )
    failed = land_late(payment, payment_method=failing.payment_method_id)  # nothing to refund
    extra = ExtraCharge.objects.create(
        payment=payment,
        stripe_payment_intent_id=failed.id,
        reason=ExtraCharge.Reason.DUPLICATE,
        amount_cents=5_000,
        currency="usd",
        created_at=JAN_31,
    )

    extra = extra_charges.extra_charge_refund(extra_charge_id=extra.pk)

    assert extra.status == "failed" and "failed payment" in extra.failure_message
    [entry] = AuditEntry.objects.filter(team=team, action=AuditEntry.Action.REFUND_FAILED)
    assert failed.id in entry.description
    assert extra_charges.extra_charges_refund_pending() == 0  # not retried: a person looks at it
