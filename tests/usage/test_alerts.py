"""Usage alerts: 80% / 100% of the period's included tokens and the spend cap, one email per threshold
per period however often the task runs, re-armed by a new period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from accounts.selectors import team_for_user
from tiers import services as tier_services
from tiers.models import Subscription, Tier
from tiers.selectors import entitlements_cache_clear
from tiers.services import subscription_spend_cap_set
from usage.alerts import usage_alerts_evaluate
from usage.models import UsageAlert
from usage.quotas.base import UsageEvent
from usage.rollups import usage_rollup_fold
from usage.selectors import usage_alert_list_recent, usage_estimate
from usage.services import usage_records_create

SMALL = "Llama-3.3-8B-Instruct"
T0 = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)  # the subscription's anchor: periods start on the 10th, 12:30
INCLUDED = 10_000


@pytest.fixture
def metered(catalog):
    """A team on a tier with 10,000 included tokens, $10 a month, overage at 0.1 cent per token."""
    with time_machine.travel(T0, tick=False):
        user = tier_services.user_create(email="owner@example.com")
    team = team_for_user(user=user)
    tier = Tier.objects.create(
        slug="metered", name="Metered", is_paid=True, price_cents=1_000, monthly_tokens=INCLUDED,
        overage_policy="bill", overage_cents_per_million_tokens=100_000,
    )  # fmt: skip
    tier.allowed_models.set(catalog["free"].allowed_models.all())
    Subscription.objects.filter(team=team).update(tier=tier)
    entitlements_cache_clear()
    return team


_n = 0


def use(team, tokens: int, when: datetime) -> None:
    global _n
    _n += 1
    event = UsageEvent(
        request_id=f"u{_n}", team_id=team.pk, api_key_id=None, model=SMALL,
        prompt_tokens=tokens, completion_tokens=0, created_at=when,
    )  # fmt: skip
    assert usage_records_create(events=[event]) == 1


def evaluate(now, django_capture_on_commit_callbacks) -> int:
    with django_capture_on_commit_callbacks(execute=True):
        return usage_alerts_evaluate(now=now)


@pytest.mark.django_db
def test_token_alerts_at_exactly_80_and_100_percent_once_each(metered, mailoutbox, django_capture_on_commit_callbacks):
    team = metered
    day = T0 + timedelta(days=3)
    use(team, 5_000, day)
    usage_rollup_fold()  # part of the usage folded, part still in records: both count
    use(team, 2_990, day + timedelta(minutes=5))  # 7,990 = 79.9%
    now = day + timedelta(hours=1)
    assert evaluate(now, django_capture_on_commit_callbacks) == 0
    assert mailoutbox == []

    use(team, 10, now)  # 8,000 = 80% exactly
    now += timedelta(minutes=1)
    assert evaluate(now, django_capture_on_commit_callbacks) == 1
    assert evaluate(now, django_capture_on_commit_callbacks) == 0  # the task runs again: nothing new
    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == ["owner@example.com"]
    assert "80%" in mailoutbox[0].subject and "8000 of 10000" in mailoutbox[0].body

    use(team, 1_999, now)  # 9,999: not 100% yet
    assert evaluate(now + timedelta(minutes=1), django_capture_on_commit_callbacks) == 0
    use(team, 1, now)  # 10,000 = 100%
    usage_rollup_fold()
    assert evaluate(now + timedelta(minutes=2), django_capture_on_commit_callbacks) == 1
    assert evaluate(now + timedelta(minutes=3), django_capture_on_commit_callbacks) == 0
    assert [m.subject for m in mailoutbox] == [
        "[TierLab] You have used 80% of your monthly tokens",
        "[TierLab] You have used all of your monthly tokens",
    ]
    alerts = usage_alert_list_recent(team_id=team.pk)
    assert [a.kind for a in alerts] == ["tokens_100", "tokens_80"]
    assert all(a.emailed_at is not None and a.period_start == T0 for a in alerts)


@pytest.mark.django_db
def test_a_new_period_re_arms_the_alerts(metered, mailoutbox, django_capture_on_commit_callbacks):
    team = metered
    use(team, 8_500, T0 + timedelta(days=20))
    assert evaluate(T0 + timedelta(days=20, hours=1), django_capture_on_commit_callbacks) == 1
    # The next period starts on April 10, 12:30 (the anchor's day and time): its usage starts at 0.
    april = datetime(2026, 4, 10, 12, 30, tzinfo=UTC)
    use(team, 7_999, april + timedelta(hours=2))
    assert evaluate(april + timedelta(hours=3), django_capture_on_commit_callbacks) == 0
    use(team, 1, april + timedelta(hours=2, minutes=30))
    assert evaluate(april + timedelta(hours=3), django_capture_on_commit_callbacks) == 1
    assert sorted(UsageAlert.objects.values_list("period_start", "kind")) == [
        (T0, "tokens_80"),
        (april, "tokens_80"),
    ]
    assert len(mailoutbox) == 2


@pytest.mark.django_db
def test_notify_only_spend_cap_alerts_once(metered, mailoutbox, django_capture_on_commit_callbacks):
    team = metered
    subscription_spend_cap_set(team=team, cap_cents=1_500, hard=False)  # fee $10 + $5 overage = 5,000 tokens
    day = T0 + timedelta(days=1)
    use(team, INCLUDED + 4_990, day)  # overage 4,990 tokens = 499 cents: bill 1,499
    assert [a.kind for a in _evaluated(team, day, django_capture_on_commit_callbacks)] == ["tokens_100", "tokens_80"]
    use(team, 10, day)  # bill 1,500 = the cap
    assert [a.kind for a in _evaluated(team, day, django_capture_on_commit_callbacks)] == [
        "spend_cap",
        "tokens_100",
        "tokens_80",
    ]
    assert evaluate(day + timedelta(minutes=5), django_capture_on_commit_callbacks) == 0
    spend = [m for m in mailoutbox if "spend cap" in m.subject]
    assert len(spend) == 1 and "$15.00" in spend[0].body and "notify only" in spend[0].body
    estimate = usage_estimate(team=team, now=day)
    assert (estimate.overage_tokens, estimate.overage_cents, estimate.estimated_total_cents) == (5_000, 500, 1_500)


def _evaluated(team, now, capture):
    evaluate(now + timedelta(minutes=1), capture)
    return usage_alert_list_recent(team_id=team.pk)


@pytest.mark.django_db
def test_usage_estimate_is_current_and_prices_overage_like_the_invoice(metered, django_assert_max_num_queries):
    from tiers.pricing import overage_line_values

    team = metered
    use(team, 12_345, T0 + timedelta(minutes=1))  # in the period's first, partial hour (12:30-13:00)
    use(team, 1_000, T0 - timedelta(minutes=1))  # the period before: not counted
    usage_rollup_fold()
    use(team, 100, T0 + timedelta(days=2))  # not folded yet: counted all the same
    with django_assert_max_num_queries(2):
        estimate = usage_estimate(team=team, now=T0 + timedelta(days=2, hours=1))
    assert (estimate.period_start, estimate.period_end) == (T0, datetime(2026, 4, 10, 12, 30, tzinfo=UTC))
    assert (estimate.tokens_used, estimate.requests, estimate.included_tokens) == (12_445, 2, INCLUDED)
    assert (estimate.overage_tokens, estimate.overage_cents) == overage_line_values(
        tier=Tier.objects.get(slug="metered"), tokens_used=12_445
    )
    assert estimate.estimated_total_cents == 1_000 + 245
    assert (estimate.currency, estimate.bills_overage, estimate.spend_cap_cents) == ("usd", True, None)


@pytest.mark.django_db
def test_alert_task_is_registered_and_idempotent(metered, mailoutbox, django_capture_on_commit_callbacks):
    from usage.tasks import usage_alerts_evaluate as task

    now = T0 + timedelta(days=1)
    use(metered, 9_000, now - timedelta(minutes=5))
    with time_machine.travel(now, tick=False), django_capture_on_commit_callbacks(execute=True):
        assert task.apply().get() == 1
        assert task.apply().get() == 0
    assert len(mailoutbox) == 1


@pytest.mark.django_db
def test_a_failed_email_is_retried_by_the_next_run_and_sent_once(
    metered, mailoutbox, django_capture_on_commit_callbacks, settings
):
    import socket

    with socket.socket() as probe:  # a loopback port nobody listens on: a mail server that is down
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    now = T0 + timedelta(days=1)
    use(metered, 8_000, now)
    locmem = settings.EMAIL_BACKEND
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", closed_port, 2
    assert evaluate(now, django_capture_on_commit_callbacks) == 1
    assert UsageAlert.objects.get().emailed_at is None  # the claim was given back
    settings.EMAIL_BACKEND = locmem
    assert evaluate(now + timedelta(minutes=1), django_capture_on_commit_callbacks) == 0
    assert evaluate(now + timedelta(minutes=2), django_capture_on_commit_callbacks) == 0
    assert len(mailoutbox) == 1 and UsageAlert.objects.get().emailed_at == now + timedelta(minutes=1)
