"""The billing engine's charge path against a real localstripe process (tests/stripe_fixtures.py):
checkout, trials, declines, proration charged to the cent, renewals, dunning to the free tier, emails,
refunds, and exactly-once under faults (Stripe down, a crash after the charge, two passes at once).

Nothing is mocked: time is driven with ``now=``, faults are made for real (a closed port, a charge made
behind the engine's back). Transactional tests: emails and cache clears run on commit, as in production.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail
from django.core.management import CommandError, call_command
from django.db import transaction
from django.utils import timezone

from accounts.models import AuditEntry
from accounts.selectors import team_for_user
from billing import checkout, customers, payments, refunds, run, selectors, services
from billing import stripe_gateway as gateway
from billing.models import BillingCustomer, Invoice, Payment, Refund
from tests.billing.billing_engine_helpers import payment_intents_for_invoice, run_in_threads, subscription_of, usage
from tests.factories import UserFactory
from tests.helpers_celery import closed_loopback_port
from tiers.models import Subscription, Tier
from tiers.selectors import entitlements_for_team
from tiers.services import user_create

pytestmark = pytest.mark.django_db(transaction=True)


def dt(y, m, d, h=10, minute=0):
    return datetime(y, m, d, h, minute, tzinfo=UTC)


JAN_31 = dt(2026, 1, 31)
FEB_28 = dt(2026, 2, 28)


def paid_tier(slug: str, price_cents: int, **extra) -> Tier:
    tier = Tier(slug=slug, name=slug.title(), price_cents=price_cents, **{"monthly_tokens": 10_000_000, **extra})
    tier.full_clean()
    tier.save()
    return tier


@pytest.fixture
def team_tier(catalog):
    return paid_tier("team", 5_000, sort_order=25)


@pytest.fixture
def business_tier(catalog):
    return paid_tier("business", 15_000, sort_order=26)


_users = iter(range(1, 10_000))


def new_team():
    user = user_create(email=f"owner{next(_users)}@example.com", password="correct-horse-battery-9")
    return team_for_user(user=user)


def subscribed(tier: Tier, *, now: datetime = JAN_31, card: str = "pm_card_visa"):
    team = new_team()
    result = checkout.subscription_change(team=team, tier=tier, payment_method=card, now=now)
    assert result.change == "subscribed", result
    mail.outbox.clear()
    return team


def snapshot(team) -> dict:
    sub = subscription_of(team)
    return {f.attname: getattr(sub, f.attname) for f in Subscription._meta.concrete_fields if f.attname != "updated_at"}


def renewal_of(team) -> Invoice:
    return Invoice.objects.get(team=team, kind=Invoice.Kind.RENEWAL)


# --- Checkout ------------------------------------------------------------------------------------------------


def test_checkout_with_a_good_card_charges_the_first_period_and_sends_one_receipt(team_tier, stripe_local):
    team = new_team()
    result = checkout.subscription_change(team=team, tier=team_tier, payment_method="pm_card_visa", now=JAN_31)

    assert result.change == "subscribed"
    invoice, payment = result.invoice, result.payment
    assert (invoice.kind, invoice.status, invoice.total_cents, invoice.paid_at) == ("initial", "paid", 5_000, JAN_31)
    assert invoice.number == f"TL-{invoice.pk:08d}"
    assert (invoice.period_start, invoice.period_end) == (JAN_31, FEB_28)
    assert (payment.attempt, payment.status, payment.idempotency_key) == (
        1,
        "succeeded",
        f"invoice:{invoice.pk}:attempt:1",
    )
    sub = subscription_of(team)
    assert (sub.tier, sub.status, sub.billing_anchor, sub.current_period_end) == (team_tier, "active", JAN_31, FEB_28)
    [intent] = payment_intents_for_invoice(stripe_local, invoice.pk)
    assert intent["id"] == payment.stripe_payment_intent_id and intent["amount"] == 5_000
    expected = {"invoice_id": str(invoice.pk), "attempt": "1", "team_id": str(team.pk)}
    assert expected.items() <= intent["metadata"].items()
    customer = BillingCustomer.objects.get(team=team)
    assert (customer.card_brand, customer.card_last4) == ("visa", "4242")
    assert entitlements_for_team(team_id=team.pk).tier_slug == "team"  # this process sees it at once

    [receipt] = mail.outbox
    assert receipt.subject == f"[TierLab] Receipt for invoice {invoice.number} ($50.00)"
    assert receipt.to == [team.memberships.get().user.email] and "$50.00" in receipt.body

    # The webhook (or a second lookup) delivering the same outcome again changes nothing, sends nothing.
    again = gateway.payment_intent_retrieve(payment_intent_id=payment.stripe_payment_intent_id)
    assert payments.payment_outcome_record(intent=again, now=JAN_31 + timedelta(seconds=2)).pk == payment.pk
    invoice.refresh_from_db()
    assert invoice.paid_at == JAN_31 and len(mail.outbox) == 1


def test_a_card_declined_at_attach_changes_nothing(team_tier, stripe_local):
    team = new_team()
    before = snapshot(team)
    with pytest.raises(gateway.PaymentDeclined):
        checkout.subscription_change(
            team=team, tier=team_tier, payment_method="pm_card_visa_chargeDeclined", now=JAN_31
        )
    assert snapshot(team) == before
    assert not Invoice.objects.filter(team=team).exists()


def test_a_charge_declined_at_checkout_voids_its_invoice_and_changes_nothing(team_tier, stripe_local):
    team = new_team()
    before = snapshot(team)
    with pytest.raises(gateway.PaymentDeclined) as declined:
        checkout.subscription_change(team=team, tier=team_tier, payment_method="pm_card_chargeCustomerFail", now=JAN_31)
    assert declined.value.code == "card_declined" and declined.value.message
    assert snapshot(team) == before  # still free, same period, not past due
    invoice = Invoice.objects.get(team=team)
    assert (invoice.status, invoice.voided_at, invoice.next_attempt_at) == ("void", JAN_31, None)
    assert list(invoice.payments.values_list("status", flat=True)) == ["failed"]
    assert mail.outbox == []  # the customer saw the error on the page: no dunning, no email
    run.billing_run(now=JAN_31 + timedelta(days=2))
    assert len(payment_intents_for_invoice(stripe_local, invoice.pk)) == 1  # never retried


def test_a_double_submitted_checkout_charges_once(team_tier, stripe_local):
    team = new_team()
    customers.payment_method_update(team=team, payment_method="pm_card_visa")

    def subscribe():
        return checkout.subscription_change(team=team, tier=team_tier, now=JAN_31)

    outcomes = run_in_threads([subscribe, subscribe])

    results = [o for o in outcomes if isinstance(o, services.CheckoutResult)]
    refused = [o for o in outcomes if not isinstance(o, services.CheckoutResult)]
    assert len(results) == 1 and results[0].change == "subscribed"
    [error] = refused
    # Refused whichever way the race went: the first charge still in flight, the change already done,
    # or (the second read the subscription before the first committed) changed meanwhile.
    assert error.code in {"payment_in_progress", "invalid_tier_change", "concurrent_change"}, error
    [invoice] = Invoice.objects.filter(team=team)
    assert invoice.status == "paid" and len(payment_intents_for_invoice(stripe_local, invoice.pk)) == 1


def test_a_trial_starts_without_a_charge_and_only_once_per_team(catalog, stripe_local):
    plus = catalog["plus"]  # 7 trial days
    team = new_team()
    result = checkout.subscription_change(team=team, tier=plus, payment_method="pm_card_visa", now=JAN_31)
    trial_end = JAN_31 + timedelta(days=7)
    sub = subscription_of(team)
    assert result.change == "trial_started" and result.invoice is None
    assert (sub.status, sub.trial_end, sub.billing_anchor) == ("trialing", trial_end, trial_end)
    assert (sub.current_period_start, sub.current_period_end) == (JAN_31, trial_end)
    assert not Invoice.objects.filter(team=team).exists()
    # The trial's usage has a quota window of its own, before the first paid period: the trial itself.
    assert entitlements_for_team(team_id=team.pk).period_at(JAN_31 + timedelta(days=1)) == (JAN_31, trial_end)

    checkout.subscription_cancel(team=team, now=JAN_31 + timedelta(days=2))
    run.billing_run(now=trial_end)
    assert subscription_of(team).tier.slug == "free" and not Invoice.objects.filter(team=team).exists()

    # Back to Plus: the trial is spent, so the first period is charged at once.
    again = checkout.subscription_change(team=team, tier=plus, now=trial_end + timedelta(days=1))
    assert again.change == "subscribed" and again.invoice.total_cents == 2_000


def test_a_trial_ends_into_a_charged_first_period(catalog, stripe_local):
    team = new_team()
    checkout.subscription_change(team=team, tier=catalog["pro"], payment_method="pm_card_visa", now=JAN_31)
    trial_end = JAN_31 + timedelta(days=14)
    result = run.billing_run(now=trial_end)
    assert (result.invoices_created, result.payments_succeeded) == (1, 1)
    invoice = renewal_of(team)
    assert (invoice.status, invoice.total_cents, invoice.period_start) == ("paid", 20_000, trial_end)
    assert subscription_of(team).status == "active"


# --- Upgrades: the prorated difference, to the cent ----------------------------------------------------------


@pytest.mark.parametrize(
    ("anchor", "change_at", "credit", "charge"),
    [
        # Jan 31 -> Feb 28, 2026 (28 days); 18 days left: 9/14. 5000 x 9/14 = 3214.29; 20000 x 9/14 = 12857.14
        (dt(2026, 1, 31), dt(2026, 2, 10), -3_214, 12_857),
        # Jan 31 -> Feb 29, 2028 (29 days, leap year); 19 days left. 5000 x 19/29 = 3275.86; 20000 x 19/29 = 13103.45
        (dt(2028, 1, 31), dt(2028, 2, 10), -3_276, 13_103),
        # At the period's first second: whole periods.
        (dt(2026, 3, 31), dt(2026, 3, 31), -5_000, 20_000),
    ],
)
def test_an_upgrade_charges_the_exact_prorated_difference_now(
    team_tier, catalog, stripe_local, anchor, change_at, credit, charge
):
    pro = catalog["pro"]
    team = subscribed(team_tier, now=anchor)
    period = (subscription_of(team).current_period_start, subscription_of(team).current_period_end)

    result = checkout.subscription_change(team=team, tier=pro, now=change_at)

    assert result.change == "upgraded"
    invoice = result.invoice
    lines = [(line.kind, line.amount_cents, line.tier.slug) for line in invoice.lines.order_by("id")]
    assert lines == [("proration_credit", credit, "team"), ("proration_charge", charge, "pro")]
    assert (invoice.kind, invoice.status, invoice.total_cents) == ("proration", "paid", credit + charge)
    assert invoice.billing_key == f"proration:{subscription_of(team).pk}:{change_at.isoformat()}"
    [intent] = payment_intents_for_invoice(stripe_local, invoice.pk)
    assert intent["amount"] == credit + charge and intent["status"] == "succeeded"
    sub = subscription_of(team)
    assert sub.tier == pro and (sub.current_period_start, sub.current_period_end) == period  # same period
    assert selectors.billing_overview(team=team, now=change_at).next_charge_cents == 20_000


def test_an_upgrade_in_the_last_second_prorates_to_nothing_and_charges_nothing(team_tier, catalog, stripe_local):
    team = subscribed(team_tier)
    result = checkout.subscription_change(team=team, tier=catalog["pro"], now=FEB_28 - timedelta(seconds=1))
    assert result.change == "upgraded" and result.payment is None
    assert (result.invoice.status, result.invoice.total_cents) == ("paid", 0)
    assert payment_intents_for_invoice(stripe_local, result.invoice.pk) == []
    assert subscription_of(team).tier.slug == "pro"


def test_a_declined_upgrade_changes_nothing(team_tier, catalog, stripe_local):
    team = subscribed(team_tier)
    customers.payment_method_update(team=team, payment_method="pm_card_chargeCustomerFail")
    before = snapshot(team)
    with pytest.raises(gateway.PaymentDeclined):
        checkout.subscription_change(team=team, tier=catalog["pro"], now=dt(2026, 2, 10))
    assert snapshot(team) == before
    assert Invoice.objects.get(team=team, kind="proration").status == "void"


# --- Renewals and dunning ------------------------------------------------------------------------------------


def test_a_downgrade_applies_at_the_period_end_and_the_renewal_is_charged(team_tier, business_tier, stripe_local):
    team = subscribed(business_tier)
    assert checkout.subscription_change(team=team, tier=team_tier, now=dt(2026, 2, 10)).change == "downgrade_scheduled"
    assert subscription_of(team).tier == business_tier

    result = run.billing_run(now=FEB_28)

    assert (result.periods_closed, result.invoices_created, result.payments_succeeded) == (1, 1, 1)
    assert subscription_of(team).tier == team_tier
    invoice = renewal_of(team)
    assert (invoice.status, invoice.total_cents) == ("paid", 5_000)
    assert [pi["amount"] for pi in payment_intents_for_invoice(stripe_local, invoice.pk)] == [5_000]
    assert len(mail.outbox) == 1 and "Receipt" in mail.outbox[0].subject

    # The same pass again: nothing issued, nothing charged.
    again = run.billing_run(now=FEB_28)
    assert (again.invoices_created, again.payments_attempted) == (0, 0)


def test_dunning_retries_on_schedule_then_moves_the_team_to_free(team_tier, stripe_local, settings):
    settings.TIERLAB_DUNNING_RETRY_DAYS = [1, 3, 5]
    team = subscribed(team_tier)
    customers.payment_method_update(team=team, payment_method="pm_card_chargeCustomerFail", now=dt(2026, 2, 1))

    first = run.billing_run(now=FEB_28)
    assert (first.invoices_created, first.payments_failed) == (1, 1)
    invoice = renewal_of(team)
    sub = subscription_of(team)
    assert (sub.status, sub.past_due_since) == ("past_due", FEB_28)
    assert (invoice.status, invoice.next_attempt_at) == ("open", dt(2026, 3, 1))
    ents = entitlements_for_team(team_id=team.pk)
    assert ents.is_active_at(dt(2026, 3, 2)) and not ents.is_active_at(dt(2026, 3, 4))  # 3 days of grace
    assert [m.subject for m in mail.outbox] == [f"[TierLab] Payment failed for invoice {invoice.number}"]

    assert run.billing_run(now=dt(2026, 2, 28, 23)).payments_attempted == 0  # not due yet
    # Retries are counted from the FIRST failure: +1, +3, +5 days.
    for retry_at, next_at in [(dt(2026, 3, 1), dt(2026, 3, 3)), (dt(2026, 3, 3), dt(2026, 3, 5))]:
        assert run.billing_run(now=retry_at).payments_failed == 1
        invoice.refresh_from_db()
        assert invoice.next_attempt_at == next_at
    # A past-due subscription does not renew meanwhile.
    assert subscription_of(team).current_period_end == dt(2026, 3, 31)

    last = run.billing_run(now=dt(2026, 3, 5))

    assert (last.payments_failed, last.downgraded) == (1, 1)
    invoice.refresh_from_db()
    assert (invoice.status, invoice.attempt_count, invoice.next_attempt_at) == ("uncollectible", 4, None)
    sub = subscription_of(team)
    assert (sub.tier.slug, sub.status, sub.past_due_since) == ("free", "active", None)
    assert (sub.current_period_start, sub.billing_anchor) == (dt(2026, 3, 5), dt(2026, 3, 5))
    assert len(payment_intents_for_invoice(stripe_local, invoice.pk)) == 4
    subjects = [m.subject for m in mail.outbox]
    assert subjects.count(f"[TierLab] Payment failed for invoice {invoice.number}") == 3
    assert subjects[-1] == "[TierLab] Your team was moved to the Free tier"
    assert "Nothing was deleted" in mail.outbox[-1].body
    assert AuditEntry.objects.filter(team=team, action="downgraded_after_dunning").count() == 1
    assert run.billing_run(now=dt(2026, 3, 9)).payments_attempted == 0  # nothing left to charge


def test_a_new_card_during_dunning_is_charged_at_once_and_restores_the_subscription(team_tier, stripe_local):
    team = subscribed(team_tier)
    customers.payment_method_update(team=team, payment_method="pm_card_chargeCustomerFail")
    run.billing_run(now=FEB_28)
    assert subscription_of(team).status == "past_due"

    customers.payment_method_update(team=team, payment_method="pm_card_visa", now=dt(2026, 2, 28, 18))
    result = run.billing_run(now=dt(2026, 2, 28, 18))

    assert result.payments_succeeded == 1
    invoice = renewal_of(team)
    assert (invoice.status, invoice.paid_at, invoice.attempt_count) == ("paid", dt(2026, 2, 28, 18), 2)
    sub = subscription_of(team)
    assert (sub.status, sub.past_due_since, sub.tier) == ("active", None, team_tier)
    assert "Receipt" in mail.outbox[-1].subject


def test_overage_is_charged_with_the_renewal(catalog, stripe_local):
    pro_now = paid_tier(
        "pro-now", 20_000, monthly_tokens=1_000_000, overage_policy="bill", overage_cents_per_million_tokens=60
    )
    team = subscribed(pro_now)
    usage(team, 3_500_000, dt(2026, 2, 10))
    run.billing_run(now=FEB_28)
    invoice = renewal_of(team)
    assert (invoice.status, invoice.total_cents) == ("paid", 20_000 + 150)
    assert [pi["amount"] for pi in payment_intents_for_invoice(stripe_local, invoice.pk)] == [20_150]


# --- Exactly once under faults -------------------------------------------------------------------------------


def test_stripe_down_during_period_close_fails_cleanly_and_the_next_pass_completes(team_tier, stripe_local, settings):
    team = subscribed(team_tier)
    settings.STRIPE_API_BASE = f"http://127.0.0.1:{closed_loopback_port()}"

    down = run.billing_run(now=FEB_28)

    assert down.errors and down.payments_succeeded == 0
    invoice = renewal_of(team)  # the local part is done, once
    assert invoice.status == "open" and invoice.lines.count() == 1
    [payment] = invoice.payments.all()
    assert (payment.status, payment.failure_code, payment.stripe_payment_intent_id) == (
        "pending",
        "provider_unavailable",
        None,
    )
    assert subscription_of(team).status == "active"  # nothing failed on the customer's side
    # Its request may still be on its way (the quiet period, wall clock): not looked up, not sent again.
    assert payment.quiet_until > timezone.now() + gateway.charge_quiet_period() - timedelta(seconds=30)
    call_command("run_billing", "--now", "2026-02-28T10:01:00Z")
    assert Payment.objects.get(pk=payment.pk).failure_code == "provider_unavailable"
    _process_died_a_while_ago(payment)  # the quiet period is over
    with pytest.raises(CommandError, match="error"):  # the look-up fails: Stripe is still down
        call_command("run_billing", "--now", "2026-02-28T10:01:00Z")
    assert Payment.objects.get(pk=payment.pk).quiet_until <= timezone.now()  # a look-up sends nothing

    settings.STRIPE_API_BASE = stripe_local
    up = run.billing_run(now=FEB_28 + timedelta(minutes=2))

    assert up.errors == [] and up.payments_succeeded == 1
    invoice.refresh_from_db()
    assert invoice.status == "paid" and Invoice.objects.filter(team=team, kind="renewal").count() == 1
    payment.refresh_from_db()
    assert (payment.attempt, payment.status) == (1, "succeeded")  # the same attempt, completed
    assert len(payment_intents_for_invoice(stripe_local, invoice.pk)) == 1


def _charge_then_crash(invoice: Invoice, now: datetime, *, charge: bool) -> Payment:
    """What a process that died mid-charge leaves: the pending attempt, and (``charge``) a PaymentIntent
    that Stripe made for it but whose outcome was never recorded."""
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
        payment = payments.payment_start(invoice=locked, now=now)
    if charge:
        customer = BillingCustomer.objects.get(team=invoice.team)
        gateway.payment_intent_create(
            customer_id=customer.stripe_customer_id,
            payment_method_id=customer.default_payment_method_id,
            amount_cents=payment.amount_cents,
            currency=payment.currency,
            metadata={"invoice_id": str(invoice.pk), "attempt": str(payment.attempt), "team_id": str(invoice.team_id)},
            idempotency_key=payment.idempotency_key,
        )
    return payment


def _process_died_a_while_ago(payment: Payment) -> None:
    # A pending attempt inside its quiet period (wall clock) may still be charging in another process;
    # the crash is older than that.
    Payment.objects.filter(pk=payment.pk).update(quiet_until=timezone.now() - timedelta(seconds=1))


def test_a_crash_after_the_charge_is_recovered_without_charging_again(team_tier, stripe_local):
    team = subscribed(team_tier)
    run.billing_periods_close(now=FEB_28)
    invoice = renewal_of(team)
    payment = _charge_then_crash(invoice, FEB_28, charge=True)
    [intent] = payment_intents_for_invoice(stripe_local, invoice.pk)

    # Right after: it may still be in flight, so the next pass leaves it alone.
    assert run.billing_run(now=FEB_28 + timedelta(seconds=30)).payments_attempted == 0
    assert Payment.objects.get(pk=payment.pk).status == "pending"

    _process_died_a_while_ago(payment)
    result = run.billing_run(now=FEB_28 + timedelta(minutes=5))

    assert result.payments_attempted == 0 and result.payments_succeeded == 1  # found, not charged
    payment.refresh_from_db()
    assert (payment.status, payment.stripe_payment_intent_id) == ("succeeded", intent["id"])
    assert Invoice.objects.get(pk=invoice.pk).status == "paid"
    assert len(payment_intents_for_invoice(stripe_local, invoice.pk)) == 1
    assert [m.subject for m in mail.outbox] == [f"[TierLab] Receipt for invoice {invoice.number} ($50.00)"]


def test_a_crash_before_the_charge_reached_stripe_sends_the_same_attempt_once(team_tier, stripe_local):
    team = subscribed(team_tier)
    run.billing_periods_close(now=FEB_28)
    invoice = renewal_of(team)
    payment = _charge_then_crash(invoice, FEB_28, charge=False)
    _process_died_a_while_ago(payment)

    result = run.billing_run(now=FEB_28 + timedelta(minutes=5))

    assert (result.payments_attempted, result.payments_succeeded) == (1, 1)
    assert list(invoice.payments.values_list("attempt", "status")) == [(1, "succeeded")]
    [intent] = payment_intents_for_invoice(stripe_local, invoice.pk)
    assert intent["metadata"]["attempt"] == "1"


def test_two_passes_recovering_the_same_lost_attempt_send_it_once(team_tier, stripe_local):
    team = subscribed(team_tier)
    run.billing_periods_close(now=FEB_28)
    invoice = renewal_of(team)
    _process_died_a_while_ago(_charge_then_crash(invoice, FEB_28, charge=False))

    later = FEB_28 + timedelta(minutes=5)
    outcomes = run_in_threads([lambda: run.billing_run(now=later), lambda: run.billing_run(now=later)])

    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    assert sum(o.payments_attempted for o in outcomes) == 1
    assert Invoice.objects.get(pk=invoice.pk).status == "paid"
    assert len(payment_intents_for_invoice(stripe_local, invoice.pk)) == 1


def test_two_passes_at_once_issue_one_invoice_and_one_charge_each(team_tier, stripe_local):
    teams = [subscribed(team_tier) for _ in range(3)]
    outcomes = run_in_threads([lambda: run.billing_run(now=FEB_28), lambda: run.billing_run(now=FEB_28)])
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    assert sum(o.invoices_created for o in outcomes) == 3
    assert sum(o.payments_succeeded for o in outcomes) == 3
    for team in teams:
        invoice = renewal_of(team)
        assert invoice.status == "paid" and invoice.payments.count() == 1
        assert len(payment_intents_for_invoice(stripe_local, invoice.pk)) == 1
    assert len(mail.outbox) == 3  # one receipt per invoice


def test_outcomes_apply_once_in_any_order(team_tier, stripe_local):
    team = subscribed(team_tier)
    customers.payment_method_update(team=team, payment_method="pm_card_chargeCustomerFail")
    run.billing_run(now=FEB_28)
    invoice = renewal_of(team)
    first = invoice.payments.get(attempt=1)
    failed = gateway.payment_intent_retrieve(payment_intent_id=first.stripe_payment_intent_id)
    assert failed.status == "requires_payment_method"

    # The failure again (a webhook after the synchronous result): no second email, no new schedule.
    payments.payment_outcome_record(intent=failed, now=FEB_28 + timedelta(seconds=1))
    assert len(mail.outbox) == 1
    assert Invoice.objects.get(pk=invoice.pk).next_attempt_at == dt(2026, 3, 1)

    # The retry succeeds; the first attempt's failure arriving after that changes nothing.
    customers.payment_method_update(team=team, payment_method="pm_card_visa", now=dt(2026, 3, 1))
    run.billing_run(now=dt(2026, 3, 1))
    payments.payment_outcome_record(intent=failed, now=dt(2026, 3, 1, 11))
    invoice.refresh_from_db()
    assert invoice.status == "paid" and subscription_of(team).status == "active"
    # A success is final: a stale failure for the succeeded attempt changes nothing either.
    second = invoice.payments.get(attempt=2)
    stale = dataclasses.replace(
        gateway.payment_intent_retrieve(payment_intent_id=second.stripe_payment_intent_id),
        status="requires_payment_method",
    )
    payments.payment_outcome_record(intent=stale)
    assert Payment.objects.get(pk=second.pk).status == "succeeded"
    # Not ours: ignored.
    assert payments.payment_outcome_record(intent=dataclasses.replace(stale, id="pi_unknown", metadata={})) is None


# --- Operators ----------------------------------------------------------------------------------------------


def test_refunds_are_written_to_stripe_and_the_audit_log(team_tier, stripe_local):
    operator = UserFactory(is_staff=True)
    team = subscribed(team_tier)
    payment = Payment.objects.get(invoice__team=team)

    refund = refunds.payment_refund(payment=payment, actor=operator, reason="goodwill", amount_cents=1_000)

    assert (refund.status, refund.amount_cents, refund.created_by) == ("succeeded", 1_000, operator)
    assert refund.stripe_refund_id and payment.amount_refunded_cents == 1_000
    entry = AuditEntry.objects.get(team=team, action="refund")
    assert (entry.actor, entry.data["reason"], entry.data["amount_cents"]) == (operator, "goodwill", 1_000)
    with pytest.raises(services.BillingError, match=r"\$40\.00"):
        refunds.payment_refund(payment=payment, actor=operator, reason="too much", amount_cents=4_001)
    refunds.payment_refund(payment=payment, actor=operator, reason="the rest")
    assert payment.amount_refunded_cents == 5_000 and Refund.objects.filter(payment=payment).count() == 2


def test_the_overview_shows_the_card_the_next_charge_and_the_invoices(team_tier, stripe_local):
    team = subscribed(team_tier)
    overview = selectors.billing_overview(team=team, now=dt(2026, 2, 1))
    assert (overview.card_brand, overview.card_last4) == ("Visa", "4242")
    assert (overview.next_charge_at, overview.next_charge_cents, overview.currency) == (FEB_28, 5_000, "usd")
    assert [invoice.kind for invoice in overview.invoices] == ["initial"]
