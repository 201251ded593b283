"""The simulator's billing pass charges the due renewals in batches (billing.charges_batch): the same
rows, statuses, dunning and receipts as billing_run charging them one by one, and exactly once."""

from __future__ import annotations

import copy
import datetime as dt
import re

import pytest
import time_machine
from django.core import mail
from django.db import transaction
from django.utils import timezone

from billing import stripe_gateway as gateway
from billing.charges_batch import renewals_charge
from billing.checkout import subscription_change
from billing.customers import payment_method_update
from billing.emails import receipts_batched
from billing.models import Invoice, Payment
from billing.run import PROVIDER_DOWN_AFTER, billing_periods_close, billing_run
from simulation.processor import SimulatedProcessor, processor_installed
from tiers.models import Subscription, Tier
from tiers.services import users_create

pytestmark = pytest.mark.django_db(transaction=True)

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
RENEWAL = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)


class Rollback(Exception):
    pass


def _state() -> dict[str, list[tuple]]:
    """What a charge leaves behind, without ids the two ways number differently (intent ids)."""
    return {
        "payments": list(
            Payment.objects.order_by("invoice__team_id", "invoice__kind", "attempt").values_list(
                "invoice__team_id", "invoice__kind", "attempt", "status", "amount_cents", "failure_code", "quiet_until"
            )
        ),
        "invoices": list(
            Invoice.objects.order_by("team_id", "kind").values_list(
                "team_id", "kind", "status", "attempt_count", "next_attempt_at", "paid_at", "total_cents"
            )
        ),
        "subscriptions": list(
            Subscription.objects.order_by("team_id").values_list(
                "team_id", "tier__slug", "status", "past_due_since", "current_period_end"
            )
        ),
        # Invoice numbers come from a sequence, which the rolled-back one-by-one world still advanced on
        # PostgreSQL: which invoice an email is about is told by its recipient (one team each) instead.
        "emails": sorted((re.sub(r"TL-\d+", "TL-…", message.subject), tuple(message.to)) for message in mail.outbox),
    }


def _days(charge_in_batches: bool, on_commit) -> list[dict[str, list[tuple]]]:
    """The renewal day, then the first dunning retry a day later (one failing team fixed its card):
    the state after each pass. ``on_commit`` runs the pass's after-commit work (the emails) at its end,
    also inside the transaction the one-by-one world is rolled back with."""
    states = []
    for now in (RENEWAL, RENEWAL + dt.timedelta(days=1)):
        if now > RENEWAL:
            team_id = Subscription.objects.filter(status=Subscription.Status.PAST_DUE).order_by("team_id")[0].team_id
            payment_method_update(team=_team(team_id), payment_method="pm_card_visa", now=now)
        with receipts_batched(), on_commit(execute=True), transaction.atomic():
            billing_periods_close(now=now)
            if charge_in_batches:
                renewals_charge(now=now, batch_size=2)  # several batches
            billing_run(now=now)
        states.append(_state())
    return states


def _team(team_id: int):
    from accounts.models import Team

    return Team.objects.get(pk=team_id)


def test_batched_renewals_leave_what_one_by_one_charges_leave(catalog, settings, django_capture_on_commit_callbacks):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    tier = Tier(slug="team", name="Team", price_cents=5_000, monthly_tokens=10_000_000, sort_order=25)
    tier.full_clean()
    tier.save()
    processor = SimulatedProcessor()
    with processor_installed(processor):
        teams = [team for _, team in users_create(emails=[f"t{i}@example.com" for i in range(5)])]
        for team in teams:
            subscription_change(team=team, tier=tier, payment_method="pm_card_visa", now=START)
        for team in teams[1:3]:  # their renewals fail: dunning
            payment_method_update(team=team, payment_method="pm_card_chargeCustomerFail", now=START)
    mail.outbox.clear()
    charges_before = processor.charges

    one_by_one_processor = copy.deepcopy(processor)
    with pytest.raises(Rollback), transaction.atomic():
        with processor_installed(one_by_one_processor):
            one_by_one = _days(charge_in_batches=False, on_commit=django_capture_on_commit_callbacks)
        raise Rollback
    mail.outbox.clear()
    with processor_installed(processor):
        batched = _days(charge_in_batches=True, on_commit=django_capture_on_commit_callbacks)

    assert batched == one_by_one
    renewal_day, retry_day = batched
    assert [row[2] for row in renewal_day["subscriptions"]] == ["active", "past_due", "past_due", "active", "active"]
    assert [row[2] for row in retry_day["subscriptions"]] == ["active", "active", "past_due", "active", "active"]
    assert sum("Receipt for invoice" in subject for subject, _ in retry_day["emails"]) == 4  # 3 renewals, 1 retry
    # Five renewals and a retry of each failing team: seven charges, each once, both ways.
    assert processor.charges - charges_before == one_by_one_processor.charges - charges_before == 7

    with processor_installed(processor), transaction.atomic():  # the same pass again charges nothing
        assert renewals_charge(now=RENEWAL + dt.timedelta(days=1)).attempted == 0
    assert processor.charges - charges_before == 7


class Unreachable(SimulatedProcessor):
    """Every charge call fails as if the payment provider could not be reached (nothing charged)."""

    calls: int = 0

    def payment_intent_create(self, **kwargs):
        self.calls += 1
        raise gateway.PaymentProviderUnavailable("The payment provider could not be reached.")


def test_an_unreachable_provider_stops_the_batch_and_the_attempts_are_charged_once_later(catalog):
    tier = Tier(slug="team", name="Team", price_cents=5_000, monthly_tokens=10_000_000, sort_order=25)
    tier.full_clean()
    tier.save()
    processor = SimulatedProcessor()
    with processor_installed(processor):
        for _, team in users_create(emails=[f"u{i}@example.com" for i in range(5)]):
            subscription_change(team=team, tier=tier, payment_method="pm_card_visa", now=START)
        billing_periods_close(now=RENEWAL)
    charges_before = processor.charges

    down = Unreachable(customers=processor.customers, cards=processor.cards)
    with processor_installed(down):
        result = renewals_charge(now=RENEWAL)
    assert down.calls == PROVIDER_DOWN_AFTER == result.attempted  # then it stops calling
    assert len(result.errors) == 5
    assert set(Payment.objects.filter(invoice__kind="renewal").values_list("status", flat=True)) == {"pending"}

    later = timezone.now() + gateway.charge_quiet_period() + dt.timedelta(seconds=1)
    with processor_installed(processor), time_machine.travel(later):
        assert renewals_charge(now=RENEWAL).attempted == 0  # attempts pending: not the batch's
        billing_run(now=RENEWAL)  # their quiet period over: looked up, not found, sent once
    renewals = Payment.objects.filter(invoice__kind="renewal")
    assert renewals.count() == 5 and set(renewals.values_list("status", flat=True)) == {"succeeded"}
    assert processor.charges - charges_before == 5
