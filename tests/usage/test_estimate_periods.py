"""Issue 16, findings 1-3 at the service level: one billing period for the quota window, the dashboard
and /billing/ (a trial's own period, not a month counted back from its end); the estimate split into
"this period so far" (no fee already billed, nothing for a trial) and "the next invoice" (what the
period close bills); the checkout's message after a switch during a trial."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from accounts.selectors import team_for_user
from core.periods import period_containing, subscription_period_at
from tests.factories import UsageRecordFactory
from tiers.models import Subscription
from tiers.selectors import entitlements_for_team
from tiers.services import user_create
from usage.metering import limits_for
from usage.quotas.base import LimitName
from usage.selectors import usage_estimate

pytestmark = pytest.mark.django_db

SIGN_UP = datetime(2026, 12, 4, 9, 30, tzinfo=UTC)
TRIAL_END = SIGN_UP + timedelta(days=7)


def test_period_is_the_stored_one_inside_it_else_computed_from_the_anchor():
    # A trial: stored Dec 4 -> Dec 11, anchored at its end.
    trial = {"anchor": TRIAL_END, "interval": "month", "period_start": SIGN_UP, "period_end": TRIAL_END}
    assert subscription_period_at(**trial, now=SIGN_UP + timedelta(days=2)) == (SIGN_UP, TRIAL_END)
    # Counting back from the anchor gave a month before sign-up: the bug.
    assert period_containing(TRIAL_END, "month", SIGN_UP + timedelta(days=2))[0] == datetime(
        2026, 11, 11, 9, 30, tzinfo=UTC
    )
    # The trial ended and the close has not advanced it yet: the first paid period, from the anchor.
    after = TRIAL_END + timedelta(hours=1)
    assert subscription_period_at(**trial, now=after) == (TRIAL_END, datetime(2027, 1, 11, 9, 30, tzinfo=UTC))
    # A free tier's stored period is never advanced: computed from the anchor.
    free = {"anchor": SIGN_UP, "interval": "month", "period_start": SIGN_UP, "period_end": SIGN_UP + timedelta(31)}
    assert subscription_period_at(**free, now=datetime(2027, 3, 10, tzinfo=UTC)) == (
        datetime(2027, 3, 4, 9, 30, tzinfo=UTC),
        datetime(2027, 4, 4, 9, 30, tzinfo=UTC),
    )


@pytest.fixture
def trialing(catalog):
    """A team on the free tier since sign-up, then on a Plus trial (as billing.checkout._trial_start
    leaves it), with usage before and during the trial."""
    team = team_for_user(user=user_create(email="trial@example.com"))
    Subscription.objects.filter(team=team).update(
        tier=catalog["plus"],
        status="trialing",
        trial_end=TRIAL_END,
        billing_anchor=TRIAL_END,
        current_period_start=SIGN_UP,
        current_period_end=TRIAL_END,
    )
    UsageRecordFactory(team=team, prompt_tokens=700, created_at=SIGN_UP - timedelta(hours=1))  # before the trial
    UsageRecordFactory(team=team, prompt_tokens=300, created_at=SIGN_UP + timedelta(days=1))
    return team


def test_trial_estimate_quota_window_and_next_invoice(trialing, catalog):
    now = SIGN_UP + timedelta(days=2)
    estimate = usage_estimate(team=trialing, now=now)
    assert (estimate.period_start, estimate.period_end) == (SIGN_UP, TRIAL_END)
    assert estimate.tokens_used == 300  # the trial's own usage only
    assert (estimate.fee_state, estimate.due_so_far_cents) == ("trial", 0)
    # Next invoice: Plus for the first paid period, from the trial's end.
    assert (estimate.next_invoice_at, estimate.next_fee_tier, estimate.next_fee_cents) == (TRIAL_END, "Plus", 2_000)
    assert (estimate.next_period_start, estimate.next_period_end) == (
        TRIAL_END,
        datetime(2027, 1, 11, 9, 30, tzinfo=UTC),
    )
    assert estimate.next_total_cents == 2_000

    # The quota's monthly window is the same period.
    limits = {
        limit.name: limit for limit in limits_for(entitlements=entitlements_for_team(team_id=trialing.pk), now=now)
    }
    monthly = limits[LimitName.MONTHLY_TOKENS]
    assert (monthly.window_start, monthly.window_end) == (SIGN_UP, TRIAL_END)

    # Cancelled during the trial: nothing renews, nothing is due.
    Subscription.objects.filter(team=trialing).update(cancel_at_period_end=True)
    estimate = usage_estimate(team=trialing, now=now)
    assert (estimate.next_fee_tier, estimate.next_total_cents, estimate.ends_at_period_end) == ("", 0, True)
    assert estimate.due_so_far_cents == 0


def test_paid_period_bills_no_fee_again_and_next_invoice_follows_a_scheduled_change(catalog):
    team = team_for_user(user=user_create(email="pro@example.com"))
    start = datetime(2026, 12, 4, tzinfo=UTC)
    end = datetime(2027, 1, 4, tzinfo=UTC)
    Subscription.objects.filter(team=team).update(
        tier=catalog["pro"], status="active", billing_anchor=start, current_period_start=start, current_period_end=end
    )
    # 5 million tokens past Pro's included ones, at $0.60 per million: $3.00 of overage.
    included = catalog["pro"].monthly_tokens
    UsageRecordFactory(team=team, prompt_tokens=included + 5_000_000, created_at=start + timedelta(days=3))
    estimate = usage_estimate(team=team, now=start + timedelta(days=10))
    assert estimate.fee_state == "paid"
    assert estimate.overage_cents == 300 and estimate.due_so_far_cents == 300  # no fee: it was paid
    assert (estimate.next_fee_tier, estimate.next_fee_cents, estimate.next_total_cents) == ("Pro", 20_000, 20_300)
    assert (estimate.next_period_start, estimate.next_period_end) == (end, datetime(2027, 2, 4, tzinfo=UTC))

    Subscription.objects.filter(team=team).update(pending_tier=catalog["plus"])
    estimate = usage_estimate(team=team, now=start + timedelta(days=10))
    assert (estimate.next_fee_tier, estimate.next_total_cents) == ("Plus", 2_000 + 300)
    Subscription.objects.filter(team=team).update(pending_tier=catalog["free"])
    estimate = usage_estimate(team=team, now=start + timedelta(days=10))
    assert (estimate.next_fee_tier, estimate.next_total_cents) == ("", 300)


def test_trial_switch_message_says_nothing_is_charged(catalog):
    from billing.services import CheckoutResult
    from billing.views import _result_message

    team = team_for_user(user=user_create(email="switch@example.com"))
    Subscription.objects.filter(team=team).update(tier=catalog["pro"], status="trialing", trial_end=TRIAL_END)
    subscription = Subscription.objects.select_related("tier").get(team=team)
    message = _result_message(CheckoutResult(subscription=subscription, change="upgraded"))
    assert (
        message
        == "You're on Pro now, still in your free trial. Nothing is charged until Dec 11, 2026, then $200.00 per month."
    )
    Subscription.objects.filter(team=team).update(status="active")
    subscription.refresh_from_db()
    assert "prorated" in _result_message(CheckoutResult(subscription=subscription, change="upgraded"))
