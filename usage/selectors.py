from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from django.db.models import Count, F, Q, Subquery, Sum, Value
from django.db.models.functions import Coalesce, TruncDay, TruncHour

from usage.models import RollupCursor, UsageAlert, UsageRecord, UsageRollup
from usage.rollups import CURSOR_NAME as ROLLUP_CURSOR
from usage.rollups import bucket_ceil, bucket_floor

if TYPE_CHECKING:
    from accounts.models import Team
    from tiers.models import Subscription


def _unfolded() -> Q:
    """Records the rollups do not hold yet: ids above the fold cursor. The cursor is read in the same
    statement, so a fold committing in between cannot make a record count twice or not at all."""
    cursor = RollupCursor.objects.filter(name=ROLLUP_CURSOR).values("last_record_id")[:1]
    return Q(id__gt=Coalesce(Subquery(cursor), Value(0)))


_SUMS = {
    "requests": Sum("requests"),
    "prompt_tokens": Sum("prompt_tokens"),
    "completion_tokens": Sum("completion_tokens"),
    "total_tokens": Sum("total_tokens"),
}
_RECORD_SUMS = {
    "requests": Count("id"),
    "prompt_tokens": Sum("prompt_tokens"),
    "completion_tokens": Sum("completion_tokens"),
    "total_tokens": Sum("total_tokens"),
}
_COUNTERS = tuple(_SUMS)


def _summed(rows, keys: tuple[str, ...]) -> dict[tuple, dict]:
    """Rows of counters added up per ``keys`` (the rollup part and the record part of a UNION ALL)."""
    merged: dict[tuple, dict] = {}
    for row in rows:
        key = tuple(row[k] for k in keys)
        into = merged.get(key)
        if into is None:
            merged[key] = dict(row)
        else:
            for name in _COUNTERS:
                into[name] += row[name]
    return merged


def usage_series(
    *, team_id: int, start: datetime, end: datetime, granularity: str, model: str | None = None
) -> list[dict]:
    """Requests and tokens per (period, model) for ``team_id``, oldest first, for every period (UTC
    hour or day, by ``granularity``) that overlaps [start, end): ``start`` is taken back to the start
    of its period, so the first period is whole. Periods without usage are left out.

    Read from the rollups, plus the few records not folded yet (above the fold cursor), so the series
    is current to the last request. One statement (UNION ALL), whatever the range: both parts see the
    same snapshot, so a fold committing meanwhile can neither hide a record nor count it twice (two
    statements could, each reading the cursor at a different moment).
    """
    trunc = {"day": TruncDay, "hour": TruncHour}[granularity]
    start = bucket_floor(start, granularity)
    rollups = UsageRollup.objects.filter(
        team_id=team_id, granularity=granularity, bucket_start__gte=start, bucket_start__lt=end
    )
    tail = UsageRecord.objects.filter(_unfolded(), team_id=team_id, created_at__gte=start, created_at__lt=end)
    if model is not None:
        rollups, tail = rollups.filter(model=model), tail.filter(model=model)
    folded = rollups.annotate(period=F("bucket_start")).values("period", "model").annotate(**_SUMS).order_by()
    unfolded = (
        tail.annotate(period=trunc("created_at", tzinfo=UTC)).values("period", "model").annotate(**_RECORD_SUMS)
    ).order_by()
    merged = _summed(folded.union(unfolded, all=True), ("period", "model"))
    return [merged[key] for key in sorted(merged)]


def usage_totals_by_model(*, team_id: int, start: datetime, end: datetime) -> list[dict]:
    """Requests and tokens per model for ``team_id`` in [start, end), exactly (to the microsecond),
    largest total first: whole hours from the hour rollups, the partial hours at either edge and the
    records not folded yet from the records. One statement (see usage_series for why)."""
    inner_start, inner_end = bucket_ceil(start, "hour"), bucket_floor(end, "hour")
    if inner_start >= inner_end:  # less than one whole hour: the records alone
        inner_start = inner_end = start
    rollups = UsageRollup.objects.filter(
        team_id=team_id,
        granularity=UsageRollup.Granularity.HOUR,
        bucket_start__gte=inner_start,
        bucket_start__lt=inner_end,
    )
    records = _edges_and_tail(team_id=team_id, start=start, end=end, inner_start=inner_start, inner_end=inner_end)
    folded = rollups.values("model").annotate(**_SUMS).order_by()
    unfolded = records.values("model").annotate(**_RECORD_SUMS).order_by()
    totals = _summed(folded.union(unfolded, all=True), ("model",))
    return sorted(totals.values(), key=lambda row: (-row["total_tokens"], row["model"]))


def _edges_and_tail(*, team_id: int, start: datetime, end: datetime, inner_start: datetime, inner_end: datetime):
    """The records of [start, end) the hour rollups of [inner_start, inner_end) do not cover: every
    record outside the whole hours, and the unfolded ones inside them."""
    return UsageRecord.objects.filter(
        Q(created_at__lt=inner_start) | Q(created_at__gte=inner_end) | _unfolded(),
        team_id=team_id,
        created_at__gte=start,
        created_at__lt=end,
    )


@dataclass(frozen=True)
class UsageEstimate:
    """The team's current billing period so far: tokens used and what the period's bill would be if it
    closed now (tier fee + overage, priced as the invoice prices it). Money in cents of ``currency``."""

    period_start: datetime
    period_end: datetime
    tokens_used: int
    requests: int
    included_tokens: int | None  # None: unlimited
    overage_tokens: int
    fee_cents: int
    overage_cents: int
    estimated_total_cents: int
    currency: str
    spend_cap_cents: int | None
    spend_cap_hard: bool
    bills_overage: bool

    @property
    def quota_fraction(self) -> float | None:
        """Share of the included tokens used (for gauges; alerts compare integers, not this)."""
        if not self.included_tokens:
            return None
        return self.tokens_used / self.included_tokens


def usage_period_totals(*, team_id: int, start: datetime, end: datetime) -> tuple[int, int]:
    """(requests, total tokens) of ``team_id`` in [start, end), exact and current (see
    usage_totals_by_model). One query."""
    rows = usage_totals_by_model(team_id=team_id, start=start, end=end)
    return sum(r["requests"] for r in rows), sum(r["total_tokens"] for r in rows)


def usage_estimate_for_subscription(*, subscription: Subscription, now: datetime) -> UsageEstimate:
    """``usage_estimate`` for an already loaded subscription (with its tier)."""
    from core.periods import period_containing
    from tiers.pricing import overage_line_values

    tier = subscription.tier
    # The quota's window (Entitlements.period_at), which is also the period the invoice bills.
    period_start, period_end = period_containing(subscription.billing_anchor, tier.billing_interval, now)
    requests, tokens = usage_period_totals(team_id=subscription.team_id, start=period_start, end=period_end)
    overage = overage_line_values(tier=tier, tokens_used=tokens)
    overage_tokens, overage_cents = overage or (0, 0)
    return UsageEstimate(
        period_start=period_start,
        period_end=period_end,
        tokens_used=tokens,
        requests=requests,
        included_tokens=tier.monthly_tokens,
        overage_tokens=overage_tokens,
        fee_cents=tier.price_cents,
        overage_cents=overage_cents,
        estimated_total_cents=tier.price_cents + overage_cents,
        currency=tier.currency,
        spend_cap_cents=subscription.spend_cap_cents,
        spend_cap_hard=subscription.spend_cap_hard,
        bills_overage=tier.bills_overage,
    )


def usage_estimate(*, team: Team, now: datetime) -> UsageEstimate | None:
    """The team's current period so far and its estimated bill; None without a current subscription.
    Two queries."""
    from tiers.selectors import subscription_current

    subscription = subscription_current(team=team)
    if subscription is None:
        return None
    return usage_estimate_for_subscription(subscription=subscription, now=now)


def usage_alert_list_recent(*, team_id: int, limit: int = 10) -> list[UsageAlert]:
    """The team's most recent usage alerts (thresholds crossed), newest first."""
    return list(UsageAlert.objects.filter(team_id=team_id).order_by("-created_at", "-id")[:limit])
