"""Usage alerts: 80% and 100% of the period's included tokens, and the subscriber's spend cap.

Computed apart from where limits are enforced (STYLE.md, after PostHog's quota_limiting): a beat task
evaluates the teams with recent usage, the request path never waits for it.

Exactly once per (team, period, kind), by the unique constraint on ``UsageAlert``, not by luck: a
second or concurrent run finds the row and neither creates nor emails anything. The email is sent
after the row commits, claimed first (``emailed_at`` set by a compare-and-set UPDATE), so two runs
never send the same alert twice; a send that fails gives the claim back and the next run retries it.
A crash between the claim and the send loses that email (at most once: an alert is a notice, and a
second copy is worse than a missing one the dashboard still shows).

Which teams: those with usage in the last ``LOOKBACK`` (hour rollups since then, plus records not
folded yet, plus insufficient_quota refusals), with a current (not canceled) subscription. A threshold
can only be crossed by new usage, and the lookback covers a beat task that was down for a while; no
scan of all teams or all records. Each team found costs a few indexed queries (its period's totals,
see usage.selectors.usage_estimate): fine for thousands of active teams a minute; beyond that, the
next step is one grouped query over the hour rollups for all candidates.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from core.templatetags.tier_format import money
from tiers.models import Subscription
from usage import emails
from usage.models import QuotaRefusalCount, UsageAlert, UsageRecord, UsageRollup
from usage.selectors import UsageEstimate, _unfolded, usage_estimate_for_subscription

logger = logging.getLogger(__name__)

LOOKBACK = timedelta(days=1)
# Unsent alerts older than this are left alone (the dashboard still shows them).
EMAIL_RETRY_WINDOW = timedelta(days=1)


def _teams_with_recent_usage(*, now: datetime) -> set[int]:
    since = now - LOOKBACK
    hour_start = since.replace(minute=0, second=0, microsecond=0)
    folded = UsageRollup.objects.filter(granularity=UsageRollup.Granularity.HOUR, bucket_start__gte=hour_start)
    unfolded = UsageRecord.objects.filter(_unfolded())
    # A hard spend cap can refuse every request of a team (a reservation larger than what the cap
    # leaves), so a team with such refusals and no new usage is a candidate too.
    refused = QuotaRefusalCount.objects.filter(code="insufficient_quota", hour__gte=hour_start)
    return {
        *folded.values_list("team_id", flat=True).distinct(),
        *unfolded.values_list("team_id", flat=True).distinct(),
        *refused.values_list("team_id", flat=True).distinct(),
    }


def _crossed(*, estimate: UsageEstimate, subscription: Subscription) -> list[tuple[str, str]]:
    """(kind, message) of every threshold the period's usage has reached. Integer comparisons, so
    79.9% is not 80%."""
    found: list[tuple[str, str]] = []
    included, used = estimate.included_tokens, estimate.tokens_used
    if included:
        if used * 100 >= included * 80:
            found.append(
                (UsageAlert.Kind.TOKENS_80, f"You have used 80% of this period's {included:,} included tokens.")
            )
        if used >= included:
            found.append(
                (UsageAlert.Kind.TOKENS_100, f"You have used all of this period's {included:,} included tokens.")
            )
    cap = estimate.spend_cap_cents
    if cap is not None and estimate.bills_overage and _spend_cap_reached(estimate=estimate, subscription=subscription):
        mode = "further requests are refused" if estimate.spend_cap_hard else "requests continue (notify only)"
        found.append(
            (
                UsageAlert.Kind.SPEND_CAP,
                f"This period's estimated bill reached your spend cap of {money(cap, estimate.currency)}: {mode}.",
            )
        )
    return found


def _spend_cap_reached(*, estimate: UsageEstimate, subscription: Subscription) -> bool:
    if estimate.estimated_total_cents >= estimate.spend_cap_cents:
        return True
    if not estimate.spend_cap_hard:
        return False
    # A hard cap refuses a request whose reservation (prompt + maximum completion) would pass it, so
    # the bill can stop just short of the cap while requests are already refused: a refusal for
    # insufficient_quota this period (only the cap causes it on a tier that bills overage) counts too.
    return QuotaRefusalCount.objects.filter(
        team_id=subscription.team_id,
        code="insufficient_quota",
        hour__gte=estimate.period_start.replace(minute=0, second=0, microsecond=0),
    ).exists()


def _alert_create(*, team_id: int, period_start: datetime, kind: str, message: str, now: datetime) -> UsageAlert | None:
    """The new alert, or None if this (team, period, kind) has one already."""
    if UsageAlert.objects.filter(team_id=team_id, period_start=period_start, kind=kind).exists():
        return None
    try:
        with transaction.atomic():  # a savepoint: a concurrent run's row must not abort the others
            return UsageAlert.objects.create(
                team_id=team_id, period_start=period_start, kind=kind, message=message, created_at=now
            )
    except IntegrityError:
        return None


def usage_alerts_evaluate(*, now: datetime | None = None) -> int:
    """Create the alerts of every threshold the teams with recent usage have crossed in their current
    period and email each new one to the team's owners after commit. Returns how many were created.
    Safe to run twice or concurrently."""
    now = now or timezone.now()
    team_ids = _teams_with_recent_usage(now=now)
    subscriptions = Subscription.objects.current().select_related("tier").filter(team_id__in=team_ids)
    created: list[int] = []
    for subscription in subscriptions:
        estimate = usage_estimate_for_subscription(subscription=subscription, now=now)
        for kind, message in _crossed(estimate=estimate, subscription=subscription):
            with transaction.atomic():
                alert = _alert_create(
                    team_id=subscription.team_id,
                    period_start=estimate.period_start,
                    kind=kind,
                    message=message,
                    now=now,
                )
                if alert is not None:
                    created.append(alert.pk)
                    transaction.on_commit(lambda alert_id=alert.pk: usage_alert_email(alert_id=alert_id, now=now))
    usage_alerts_email_unsent(now=now, exclude=created)
    return len(created)


def usage_alert_email(*, alert_id: int, now: datetime | None = None) -> bool:
    """Email one alert to the team's owners, unless it was emailed already (claimed by another run)."""
    now = now or timezone.now()
    claimed = UsageAlert.objects.filter(pk=alert_id, emailed_at__isnull=True).update(emailed_at=now)
    if not claimed:
        return False
    if emails.usage_alert_send(alert_id=alert_id):
        return True
    UsageAlert.objects.filter(pk=alert_id, emailed_at=now).update(emailed_at=None)  # retried next run
    return False


def usage_alerts_email_unsent(*, now: datetime, exclude: list[int] | None = None) -> int:
    """Retry the recent alerts whose email failed. Returns how many were sent."""
    pending = (
        UsageAlert.objects.filter(emailed_at__isnull=True, created_at__gte=now - EMAIL_RETRY_WINDOW)
        .exclude(pk__in=exclude or [])
        .values_list("pk", flat=True)
    )
    return sum(usage_alert_email(alert_id=alert_id, now=now) for alert_id in list(pending))
