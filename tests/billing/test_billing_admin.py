"""The operator's billing admin: read-only invoices, payments, refunds, Stripe events, audit entries and
customers; actions (comp, refund, move tier, cancel now, suspend) that call the billing and tiers services."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.urls import reverse

from accounts.models import AuditEntry
from billing import checkout, refunds, services
from billing.models import ExtraCharge, Invoice, Payment, Refund, StripeEvent
from tests.billing.billing_state import (
    card_on_file,
    invoice_paid,
    invoice_prorated,
    paid_tier_without_trial,
    subscriber,
)
from tiers.models import Subscription
from tiers.selectors import subscription_current
from tiers.services import operator_ensure

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(catalog):
    user, _ = operator_ensure(email="ops@example.com", password="operator-password-1")
    return user


@pytest.fixture
def ops(client, operator):
    client.force_login(operator)
    return client


@pytest.fixture
def team_tier(catalog):
    return paid_tier_without_trial()


@pytest.fixture
def billed(catalog, team_tier):
    """Alice has a paid invoice and an open prorated one; Bob has a paid one."""
    _, alice = subscriber("alice@example.com")
    _, bob = subscriber("bob@example.com")
    Subscription.objects.filter(team=alice).update(tier=team_tier)
    card_on_file(alice)
    return {
        "alice": alice,
        "bob": bob,
        "paid": invoice_paid(alice, number="TL-0000001", tier=team_tier),
        "open": invoice_prorated(alice, number="TL-0000002", old=team_tier, new=catalog["pro"]),
        "bob_paid": invoice_paid(bob, number="TL-0000003", tier=team_tier),
    }


def _changelist(model: str) -> str:
    app = {"subscription": "tiers", "auditentry": "accounts"}.get(model, "billing")
    return reverse(f"admin:{app}_{model}_changelist")


def _run_action(ops, model: str, action: str, objects, **form):
    """Select ``objects`` and run ``action``: the intermediate page, then "apply" with ``form``."""
    url = _changelist(model)
    selected = [str(obj.pk) for obj in objects]
    first = ops.post(url, {"action": action, "_selected_action": selected})
    assert first.status_code == 200, first.content[:500]
    applied = ops.post(url, {"action": action, "_selected_action": selected, "apply": "1", **form}, follow=True)
    assert applied.status_code == 200
    return first, applied


# --- Read-only lists and pages ---------------------------------------------------------------------------


def test_invoice_list_shows_money_and_supports_search_and_filters(ops, billed):
    url = _changelist("invoice")
    page = ops.get(url).content.decode()
    for text in ["TL-0000001", "TL-0000002", "TL-0000003", "$50.00", "$75.00", "2026-01-01 to 2026-02-01"]:
        assert text in page
    assert [i.number for i in ops.get(url, {"q": "TL-0000003"}).context["cl"].result_list] == ["TL-0000003"]
    by_email = ops.get(url, {"q": "alice@example.com"}).context["cl"].result_list
    assert {i.number for i in by_email} == {"TL-0000001", "TL-0000002"}
    open_only = ops.get(url, {"status__exact": "open"}).context["cl"].result_list
    assert [i.number for i in open_only] == ["TL-0000002"]
    by_team = ops.get(url, {"team__id__exact": billed["bob"].pk}).context["cl"].result_list
    assert [i.number for i in by_team] == ["TL-0000003"]


def test_invoice_page_is_view_only_with_lines_and_payments(ops, billed):
    invoice = billed["paid"]
    url = reverse("admin:billing_invoice_change", args=[invoice.pk])
    response = ops.get(url)
    page = response.content.decode()
    assert response.status_code == 200
    assert "Team (Jan 1, 2026 to Feb 1, 2026)" in page and "$50.00" in page and "pi_test_TL-0000001" in page
    assert 'name="_save"' not in page and 'name="total_cents"' not in page  # nothing editable
    assert f"?team__id__exact={billed['alice'].pk}" in page  # the team's audit trail
    # Posting a change is refused; money cannot be edited here.
    assert ops.post(url, {"total_cents": 1, "status": "void"}).status_code == 403
    invoice.refresh_from_db()
    assert (invoice.total_cents, invoice.status) == (5_000, "paid")


@pytest.mark.parametrize(
    "model", ["invoice", "payment", "refund", "extracharge", "stripeevent", "auditentry", "billingcustomer"]
)
def test_billing_rows_are_listed_but_cannot_be_added(ops, billed, model):
    assert (
        ops.get(reverse(f"admin:{'accounts' if model == 'auditentry' else 'billing'}_{model}_add")).status_code == 403
    )
    assert ops.get(_changelist(model)).status_code == 200


def test_billing_rows_cannot_be_deleted(ops, billed):
    invoice = billed["paid"]
    assert ops.get(reverse("admin:billing_invoice_delete", args=[invoice.pk])).status_code == 403
    payment = invoice.payments.get()
    assert ops.get(reverse("admin:billing_payment_delete", args=[payment.pk])).status_code == 403
    actions = ops.get(_changelist("invoice")).context["action_form"].fields["action"].choices
    assert "delete_selected" not in dict(actions)


def test_payment_refund_event_customer_and_audit_pages(ops, billed, operator):
    payment = billed["paid"].payments.get()
    refund = Refund.objects.create(
        payment=payment,
        idempotency_key="refund:1",
        stripe_refund_id="re_test_1",
        amount_cents=5_000,
        reason="Customer asked",
        status="succeeded",
        created_by=operator,
        created_at=datetime(2026, 1, 3, tzinfo=UTC),
    )
    event = StripeEvent.objects.create(
        event_id="evt_1", type="payment_intent.succeeded", payload={"id": "evt_1", "data": {"object": {"id": "pi_1"}}}
    )
    entry = AuditEntry.objects.create(
        team=billed["alice"],
        actor=operator,
        action="invoice_comp",
        description="Comped TL-0000002",
        data={"invoice": "TL-0000002"},
        created_at=datetime(2026, 1, 20, tzinfo=UTC),
    )
    customer = billed["alice"].billing_customer

    payments = ops.get(_changelist("payment")).content.decode()
    assert "TL-0000001 attempt 1" in payments and "$50.00" in payments
    extra = ExtraCharge.objects.create(
        payment=payment,
        stripe_payment_intent_id="pi_test_second",
        reason=ExtraCharge.Reason.DUPLICATE,
        amount_cents=5_000,
        currency="usd",
        status=ExtraCharge.Status.REFUNDED,
        stripe_refund_id="re_test_auto",
        created_at=datetime(2026, 1, 2, tzinfo=UTC),
    )
    payment_page = ops.get(reverse("admin:billing_payment_change", args=[payment.pk])).content.decode()
    assert "re_test_1" in payment_page and 'name="_save"' not in payment_page  # refunds inline, view-only
    assert "pi_test_second" in payment_page and "re_test_auto" in payment_page  # extra charges inline
    assert "pi_test_second" in ops.get(_changelist("extracharge")).content.decode()
    assert ops.get(reverse("admin:billing_extracharge_change", args=[extra.pk])).status_code == 200

    assert "Customer asked" in ops.get(_changelist("refund")).content.decode()
    assert ops.get(reverse("admin:billing_refund_change", args=[refund.pk])).status_code == 200

    event_page = ops.get(reverse("admin:billing_stripeevent_change", args=[event.pk])).content.decode()
    assert "<pre" in event_page and "&quot;id&quot;: &quot;evt_1&quot;" in event_page  # pretty-printed JSON
    assert 'name="_save"' not in event_page

    audit = ops.get(_changelist("auditentry"), {"team__id__exact": billed["alice"].pk})
    assert [e.pk for e in audit.context["cl"].result_list] == [entry.pk]
    assert (
        ops.get(_changelist("auditentry"), {"team__id__exact": billed["bob"].pk}).context["cl"].result_list.count() == 0
    )
    assert ops.get(reverse("admin:accounts_auditentry_change", args=[entry.pk])).status_code == 200

    customers = ops.get(_changelist("billingcustomer")).content.decode()
    assert "Visa •••• 4242" in customers and customer.stripe_customer_id in customers


def test_subscription_page_shows_the_team_audit_trail_and_invoices(ops, billed, operator):
    AuditEntry.objects.create(
        team=billed["alice"],
        actor=operator,
        action="tier_set_by_operator",
        description="Moved to Team: goodwill",
        created_at=datetime(2026, 1, 20, tzinfo=UTC),
    )
    AuditEntry.objects.create(
        team=billed["bob"],
        action=AuditEntry.Action.REFUND_FAILED,
        description="Bob's card failed",
        created_at=datetime.now(tz=UTC),
    )
    subscription = subscription_current(team=billed["alice"])
    page = ops.get(reverse("admin:tiers_subscription_change", args=[subscription.pk])).content.decode()
    assert "Moved to Team: goodwill" in page and "ops@example.com" in page
    assert "Bob&#x27;s card failed" not in page and "Bob's card failed" not in page
    assert f"auditentry/?team__id__exact={billed['alice'].pk}" in page
    assert f"invoice/?team__id__exact={billed['alice'].pk}" in page


# --- Actions: they call the services ---------------------------------------------------------------------


def test_comp_action_asks_for_a_reason_and_comps_only_open_invoices(ops, billed, operator, monkeypatch):
    calls = []
    monkeypatch.setattr(refunds, "invoice_comp", lambda **kw: calls.append(kw) or kw["invoice"])
    url, selected = _changelist("invoice"), [billed["paid"].pk, billed["open"].pk]
    intermediate = ops.post(url, {"action": "comp_invoices", "_selected_action": selected}).content.decode()
    assert "Comp (waive) invoices" in intermediate and "Comped by operator ops@example.com" in intermediate
    assert "TL-0000001" in intermediate and "TL-0000002" in intermediate
    assert calls == []  # nothing happens before "apply"
    applied = ops.post(
        url,
        {"action": "comp_invoices", "_selected_action": selected, "apply": "1", "reason": "Outage on Jan 20"},
        follow=True,
    )
    assert calls == [{"invoice": billed["open"], "actor": operator, "reason": "Outage on Jan 20"}]
    page = applied.content.decode()
    assert "Comped 1: TL-0000002." in page and "TL-0000001 is paid, not open: not comped." in page


def test_comp_action_needs_a_reason(ops, billed, monkeypatch):
    monkeypatch.setattr(refunds, "invoice_comp", lambda **kw: pytest.fail("service called"))
    url = _changelist("invoice")
    response = ops.post(
        url, {"action": "comp_invoices", "_selected_action": [billed["open"].pk], "apply": "1", "reason": ""}
    )
    assert response.status_code == 200 and "This field is required." in response.content.decode()


def test_comp_action_shows_the_engine_refusal(ops, billed, monkeypatch):
    def comp(**kwargs):
        raise services.BillingError("Invoice already settled.")

    monkeypatch.setattr(refunds, "invoice_comp", comp)
    _, applied = _run_action(ops, "invoice", "comp_invoices", [billed["open"]], reason="x")
    assert "TL-0000002: Invoice already settled." in applied.content.decode()


def test_refund_action_refunds_succeeded_payments_in_full(ops, billed, operator, monkeypatch):
    calls = []

    def refund(**kw):
        # As the service does: the payment comes back refreshed, fully refunded (so what is "left" of it
        # afterwards is $0.00: the message must report the refund's own amount, issue 16 finding 4).
        calls.append(dict(kw))
        payment = kw["payment"]
        amount = payment.amount_cents - payment.amount_refunded_cents
        payment.amount_refunded_cents = payment.amount_cents
        return Refund(payment=payment, amount_cents=amount)

    monkeypatch.setattr(refunds, "payment_refund", refund)
    paid = billed["paid"].payments.get()
    failed = Payment.objects.create(
        invoice=billed["open"],
        attempt=1,
        idempotency_key="invoice:open:1",
        amount_cents=7_500,
        currency="usd",
        status="failed",
        created_at=datetime(2026, 1, 16, tzinfo=UTC),
    )
    first, applied = _run_action(ops, "payment", "refund_payments", [paid, failed], reason="Goodwill")
    assert "Refunded by operator ops@example.com" in first.content.decode()
    assert calls == [{"payment": paid, "actor": operator, "reason": "Goodwill"}]  # full amount: no amount_cents
    page = applied.content.decode()
    assert "Refunded 1: TL-0000001 ($50.00)." in page and "only a succeeded, not fully refunded payment" in page


def test_move_to_tier_action_asks_for_tier_and_reason(ops, billed, operator, catalog, monkeypatch):
    calls = []
    monkeypatch.setattr(
        checkout, "subscription_tier_set_by_operator", lambda **kw: calls.append(kw) or kw["subscription"]
    )
    subscription = subscription_current(team=billed["alice"])
    first, applied = _run_action(
        ops, "subscription", "move_to_tier", [subscription], tier=catalog["pro"].pk, reason="Partner deal"
    )
    intermediate = first.content.decode()
    assert '<select name="tier"' in intermediate and "Pro" in intermediate
    assert calls == [
        {"subscription": subscription, "tier": catalog["pro"], "actor": operator, "reason": "Partner deal"}
    ]
    assert "Moved to Pro 1: alice@example.com" in applied.content.decode()


def test_cancel_now_action_confirms_then_cancels_immediately(ops, billed, operator, monkeypatch):
    calls = []
    monkeypatch.setattr(checkout, "subscription_cancel", lambda **kw: calls.append(kw))
    subscription = subscription_current(team=billed["alice"])
    first, _ = _run_action(ops, "subscription", "cancel_now", [subscription])
    assert "nothing is refunded" in first.content.decode()
    assert calls == [{"team": billed["alice"], "immediately": True, "actor": operator}]


# --- Actions through the real engine ---------------------------------------------------------------------


def test_suspend_and_lift_actions_ask_for_a_reason_and_write_the_audit_log(ops, billed, operator):
    subscription = subscription_current(team=billed["alice"])
    first, applied = _run_action(ops, "subscription", "suspend", [subscription], reason="Abuse report")
    assert "subscription_inactive" in first.content.decode()
    assert "Suspended 1: alice@example.com" in applied.content.decode()
    assert subscription_current(team=billed["alice"]).status == Subscription.Status.SUSPENDED
    entry = AuditEntry.objects.get(team=billed["alice"], action=AuditEntry.Action.SUSPENDED)
    assert (entry.actor, entry.data["reason"]) == (operator, "Abuse report")

    _, again = _run_action(ops, "subscription", "suspend", [subscription], reason="Twice")
    assert "suspended already" in again.content.decode()

    _, lifted = _run_action(ops, "subscription", "unsuspend", [subscription], reason="Resolved")
    assert "Suspension lifted 1: alice@example.com" in lifted.content.decode()
    assert subscription_current(team=billed["alice"]).status == Subscription.Status.ACTIVE
    assert AuditEntry.objects.get(team=billed["alice"], action=AuditEntry.Action.UNSUSPENDED).actor == operator


def test_comp_move_and_cancel_with_the_real_engine_write_the_audit_log(ops, billed, catalog, operator):
    _run_action(ops, "invoice", "comp_invoices", [billed["open"]], reason="Outage")
    billed["open"].refresh_from_db()
    assert billed["open"].status == Invoice.Status.VOID

    subscription = subscription_current(team=billed["alice"])
    _run_action(ops, "subscription", "move_to_tier", [subscription], tier=catalog["pro"].pk, reason="Deal")
    assert subscription_current(team=billed["alice"]).tier.slug == "pro"

    _run_action(ops, "subscription", "cancel_now", [subscription_current(team=billed["alice"])])
    assert subscription_current(team=billed["alice"]) is None or (
        subscription_current(team=billed["alice"]).tier.is_free
    )
    audit = AuditEntry.objects.filter(team=billed["alice"], actor=operator)
    assert audit.count() >= 3


def test_refund_with_the_real_engine_and_localstripe(ops, catalog, operator, team_tier, stripe_local):
    _, carol = subscriber("carol@example.com")
    checkout.subscription_change(team=carol, tier=team_tier, payment_method="pm_card_visa")
    payment = Payment.objects.get(invoice__team=carol, status="succeeded")
    _run_action(ops, "payment", "refund_payments", [payment], reason="Goodwill")
    payment.refresh_from_db()
    assert payment.amount_refunded_cents == payment.amount_cents
    assert payment.refunds.get().stripe_refund_id
    assert AuditEntry.objects.filter(team=carol, actor=operator).exists()
