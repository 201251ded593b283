"""The simulated processor: the Stripe gateway's operations with the documented test cards' behaviour,
first on its own, then behind TierLab's billing engine (checkout, renewal, dunning, refund)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from accounts.selectors import team_for_user
from billing import stripe_gateway as gateway
from billing.checkout import subscription_change
from billing.customers import payment_method_update
from billing.models import Invoice, Payment
from billing.refunds import payment_refund
from billing.run import billing_run
from simulation.processor import OPERATIONS, SimulatedProcessor, processor_installed
from tiers.models import Subscription
from tiers.services import user_create

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _charge(processor: SimulatedProcessor, customer: str, card: str, key: str = "k1") -> gateway.PaymentIntentResult:
    pm = processor.payment_method_attach(customer_id=customer, payment_method=card)
    return processor.payment_intent_create(
        customer_id=customer,
        payment_method_id=pm.payment_method_id,
        amount_cents=2_000,
        currency="USD",
        metadata={"invoice_id": 1, "attempt": 1},
        idempotency_key=key,
    )


def test_the_test_cards_behave_as_stripe_documents_them():
    processor = SimulatedProcessor()
    customer = processor.customer_create(email="a@example.com", team_id=1, idempotency_key="team:1:customer")
    assert processor.customer_create(email="a@example.com", team_id=1, idempotency_key="team:1:customer") == customer

    paid = _charge(processor, customer, "pm_card_visa", key="a")
    assert (paid.status, paid.succeeded, paid.amount_cents, paid.currency) == ("succeeded", True, 2_000, "usd")
    assert paid.metadata == {"invoice_id": "1", "attempt": "1"}
    assert _charge(processor, customer, "pm_card_mastercard", key="b").succeeded

    failed = _charge(processor, customer, "pm_card_chargeCustomerFail", key="c")
    assert (failed.status, failed.failure_code) == ("requires_payment_method", "card_declined")
    needs_you = _charge(processor, customer, "pm_card_authenticationRequired", key="d")
    assert (needs_you.status, needs_you.failure_code) == ("requires_action", "authentication_required")

    with pytest.raises(gateway.PaymentDeclined):
        processor.payment_method_attach(customer_id=customer, payment_method="pm_card_visa_chargeDeclined")
    with pytest.raises(gateway.PaymentInvalidRequest):
        processor.payment_method_attach(customer_id=customer, payment_method="pm_card_unknown")
    with pytest.raises(gateway.PaymentInvalidRequest):
        processor.payment_method_attach(customer_id="cus_nobody", payment_method="pm_card_visa")
    # An attached method has its own id, which is what a charge is made with.
    card = processor.payment_method_attach(customer_id=customer, payment_method="pm_card_visa")
    assert card.payment_method_id.startswith("pm_sim_") and (card.brand, card.last4) == ("visa", "4242")


def test_idempotency_keys_lookups_and_refunds():
    processor = SimulatedProcessor()
    customer = processor.customer_create(email="", team_id=2, idempotency_key="c")
    first = _charge(processor, customer, "pm_card_visa", key="invoice:1:attempt:1")
    again = processor.payment_intent_create(
        customer_id=customer,
        payment_method_id="pm_whatever",  # the key decides: the first result comes back, nothing is charged
        amount_cents=9,
        currency="usd",
        metadata={},
        idempotency_key="invoice:1:attempt:1",
    )
    assert again == first and processor.charges == 1
    assert processor.payment_intent_find(customer_id=customer, metadata={"invoice_id": "1"}) == first
    assert processor.payment_intent_find(customer_id="cus_other", metadata={"invoice_id": "1"}) is None
    assert processor.payment_intent_retrieve(payment_intent_id=first.id) == first
    refund = processor.refund_create(payment_intent_id=first.id, amount_cents=1_500, idempotency_key="r1")
    assert (refund.status, refund.amount_cents) == ("succeeded", 1_500)
    with pytest.raises(gateway.PaymentInvalidRequest):
        processor.refund_create(payment_intent_id=first.id, amount_cents=501, idempotency_key="r2")


def test_installing_replaces_the_gateway_operations_and_restores_them():
    originals = {name: getattr(gateway, name) for name in OPERATIONS}
    processor = SimulatedProcessor()
    with processor_installed(processor):
        assert gateway.payment_intent_create == processor.payment_intent_create
        assert gateway.ping() is True
    assert {name: getattr(gateway, name) for name in OPERATIONS} == originals


@pytest.mark.django_db
def test_the_billing_engine_runs_on_the_simulated_processor(catalog, time_machine):
    """Checkout, a declined card, a renewal that fails into dunning and recovers, a refund: each is the
    billing engine's own code, with only the processor in Stripe's place."""
    pro = catalog["pro"]
    pro.trial_days = 0
    pro.save()
    time_machine.move_to(NOW, tick=False)
    with processor_installed(SimulatedProcessor()) as processor:
        declined = team_for_user(user=user_create(email="declined@example.com"))
        with pytest.raises(gateway.PaymentDeclined):
            subscription_change(team=declined, tier=pro, payment_method="pm_card_visa_chargeDeclined", now=NOW)
        with pytest.raises(gateway.PaymentDeclined):  # attached, then its first charge fails
            subscription_change(team=declined, tier=pro, payment_method="pm_card_chargeCustomerFail", now=NOW)
        assert Subscription.objects.get(team=declined).tier.slug == "free"

        team = team_for_user(user=user_create(email="payer@example.com"))
        result = subscription_change(team=team, tier=pro, payment_method="pm_card_visa", now=NOW)
        assert (result.change, result.invoice.status, result.invoice.total_cents) == ("subscribed", "paid", 20_000)

        # The card starts failing; the renewal a month later fails and the subscription is past due.
        payment_method_update(team=team, payment_method="pm_card_chargeCustomerFail", now=NOW)
        renewal_at = NOW + timedelta(days=31)
        time_machine.move_to(renewal_at, tick=False)
        billing_run(now=renewal_at)
        sub = Subscription.objects.get(team=team)
        assert sub.status == Subscription.Status.PAST_DUE
        renewal = Invoice.objects.get(team=team, kind=Invoice.Kind.RENEWAL)
        assert renewal.status == Invoice.Status.OPEN and renewal.payments.get().failure_code == "card_declined"

        # A working card brings the retry forward: the next pass pays the renewal and ends dunning.
        fixed_at = renewal_at + timedelta(hours=5)
        payment_method_update(team=team, payment_method="pm_card_visa", now=fixed_at)
        billing_run(now=fixed_at)
        renewal.refresh_from_db()
        sub.refresh_from_db()
        assert renewal.status == Invoice.Status.PAID and sub.status == Subscription.Status.ACTIVE

        payment = Payment.objects.filter(invoice=renewal, status=Payment.Status.SUCCEEDED).get()
        operator = user_create(email="operator@example.com")
        refund = payment_refund(payment=payment, actor=operator, reason="Goodwill", amount_cents=500, now=fixed_at)
        assert (refund.status, refund.amount_cents) == ("succeeded", 500)
        assert processor.refunded[payment.stripe_payment_intent_id] == 500
