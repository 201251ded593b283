"""Reads of usage data: series and totals for the dashboard, the usage API and alerts, "tokens used in
a period" for billing, the estimate of the current period's bill.

Every figure is exact and current: whole hours or days come from the rollups (usage/rollups.py), the
rest (partial hours at a range's edges, records not folded yet) from the records, in one statement,
so a fold committing meanwhile can neither hide a record nor count it twice. Other apps read usage
only through here: nothing outside ``usage`` reads its tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from django.db.models import Count, F, Q, Subquery, Sum, Value
from django.db.models.functions import Coalesce, TruncDay, TruncHour

from core.sql import column_and_type, execute, quoted_table, rows_cte
from usage.models import RollupCursor, UsageAlert, UsageRecord, UsageRollup
from usage.rollups import CURSOR_NAME as ROLLUP_CURSOR
from usage.rollups import bucket_ceil, bucket_floor

if TYPE_CHECKING:
    from accounts.models import Team
    from tiers.models import Subscription


@dataclass(frozen=True)
class RecordHolding:
    request_hash: str
    created_at: datetime


def usage_record_holding(*, team_id: int, request_id: str) -> RecordHolding | None:
    """The usage record that holds ``request_id`` for the team (its ``request_key``), if any."""
    row = (
        UsageRecord.objects.filter(team_id=team_id, request_key=request_id)
        .values_list("request_hash", "created_at")
        .first()
    )
    return RecordHolding(request_hash=row[0], created_at=row[1]) if row is not None else None


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


# --- "Tokens used in a period": one definition, two query shapes -------------------------------------
# Usage in [start, end) is the sum over the records whose created_at lies in it; every figure below is
# exactly that, to the microsecond, and current to the last committed record. One team's period is
# read from the hour rollups plus the records they do not cover; a batch of periods (the period close)
# from the records, set-based. Why two shapes, measured on PostgreSQL: for one team with constants the
# planner reads the edges and the unfolded tail through a bitmap OR of two index ranges and the primary
# key (about 25 ms for a 300,000-record month, against 60 ms summing its records); for 5,000 periods
# joined from a row set no such per-period plan exists, and the records join is the faster statement
# (on the period close's benchmark data, half the time of a rollups + records union computing each
# period's whole hours in SQL). tests/usage/test_tokens_used.py holds both shapes to the same answers.


def _usage_by_model(*, team_id: int, start: datetime, end: datetime) -> list[dict]:
    """Requests and tokens per model of ``team_id`` in [start, end): whole hours from the hour rollups,
    the partial hours at either edge and the records not folded yet from the records. One statement
    (see usage_series for why)."""
    inner_start, inner_end = bucket_ceil(start, "hour"), bucket_floor(end, "hour")
    if inner_start >= inner_end:  # less than one whole hour: the records alone
        inner_start = inner_end = start
    rollups = UsageRollup.objects.filter(
        team_id=team_id,
        granularity=UsageRollup.Granularity.HOUR,
        bucket_start__gte=inner_start,
        bucket_start__lt=inner_end,
    )
    # The records the hour rollups of [inner_start, inner_end) do not cover: every record outside the
    # whole hours, and the unfolded ones inside them.
    records = UsageRecord.objects.filter(
        Q(created_at__lt=inner_start) | Q(created_at__gte=inner_end) | _unfolded(),
        team_id=team_id,
        created_at__gte=start,
        created_at__lt=end,
    )
    folded = rollups.values("model").annotate(**_SUMS).order_by()
    unfolded = records.values("model").annotate(**_RECORD_SUMS).order_by()
    return list(_summed(folded.union(unfolded, all=True), ("model",)).values())


def usage_totals_by_model(*, team_id: int, start: datetime, end: datetime) -> list[dict]:
    """Requests and tokens per model for ``team_id`` in [start, end), exact and current, largest total
    first. One query."""
    return sorted(
        _usage_by_model(team_id=team_id, start=start, end=end), key=lambda row: (-row["total_tokens"], row["model"])
    )


def usage_period_totals(*, team_id: int, start: datetime, end: datetime) -> tuple[int, int]:
    """(requests, total tokens) of ``team_id`` in [start, end), exact and current: the same query as
    tokens_used. One query."""
    rows = _usage_by_model(team_id=team_id, start=start, end=end)
    return sum(row["requests"] for row in rows), sum(row["total_tokens"] for row in rows)


def tokens_used(*, team_id: int, start: datetime, end: datetime) -> int:
    """Tokens ``team_id`` used in [start, end), exact and current: what the dashboard's estimate and
    the usage alerts count (through usage_period_totals), billing's overview of the next charge, and
    the Redis quota backend when it rebuilds a lost monthly counter. One query."""
    return usage_period_totals(team_id=team_id, start=start, end=end)[1]


def tokens_used_by_period(*, periods: Sequence[tuple[int, datetime, datetime]]) -> dict[int, int]:
    """team_id -> the tokens it used in its own [start, end), for every (team_id, start, end) of
    ``periods`` (0 for a team without usage; a team appears at most once): tokens_used for a whole
    batch in ONE statement, whatever its size (the period close passes up to 5,000 periods).

    The periods travel as one JSON parameter (core.sql.rows_cte), joined to the records by the (team,
    created_at) index; no Python per period beyond building the answer."""
    used = dict.fromkeys((team_id for team_id, _, _ in periods), 0)
    if len(used) != len(periods):
        raise ValueError("tokens_used_by_period: a team appears in more than one period")
    if not used:
        return used
    time_type = column_and_type(UsageRecord, "created_at")[1]
    columns = [column_and_type(UsageRecord, "team"), ("period_start", time_type), ("period_end", time_type)]
    cte, params = rows_cte("p", columns, periods)
    used_sql = tokens_used_sql(team="p.team_id", start="p.period_start", end="p.period_end")
    sql = f"WITH {cte} SELECT p.team_id, {used_sql} FROM p"  # noqa: S608 - identifiers from _meta, values as parameters
    used.update((int(team_id), int(total or 0)) for team_id, total in execute(sql, params))
    return used


def tokens_used_sql(*, team: str, start: str, end: str) -> str:
    """SQL: a scalar subquery, the tokens team ``team`` used in [``start``, ``end``) (NULL without
    usage), for statements that count usage per row of a set (tokens_used_by_period, and the period
    close on PostgreSQL, billing/close_pg.py): one index range scan of (team, created_at) per row."""
    return (
        f"(SELECT SUM(u.total_tokens) FROM {quoted_table(UsageRecord)} u"  # noqa: S608 - identifiers from _meta
        f" WHERE u.team_id = {team} AND u.created_at >= {start} AND u.created_at < {end})"
    )


def usage_totals_by_model_for_partner(*, partner_id: int, start: datetime, end: datetime) -> list[dict]:
    """{"model", "requests", "prompt_tokens", "completion_tokens"} per model, by name, of the traffic
    that came through ``partner_id``'s channel (``UsageRecord.partner_id``) in [start, end): a partner
    statement's direct lines."""
    return list(
        UsageRecord.objects.filter(partner_id=partner_id, created_at__gte=start, created_at__lt=end)
        .values("model")
        .annotate(requests=Count("id"), prompt_tokens=Sum("prompt_tokens"), completion_tokens=Sum("completion_tokens"))
        .order_by("model")
    )


@dataclass(frozen=True)
class UsageEstimate:
    """The team's current billing period so far, and what the next invoice will bill. Money in cents of
    ``currency``.

    Two different questions, both on the dashboard (issue 16, findings 1 and 2):
    - "this period so far": what the period costs beyond what is already settled. Fees are billed in
      advance (a period's fee at its start, an upgrade's prorated difference at once), and a trial costs
      nothing, so that is the overage so far (none during a trial: its usage is free). ``due_so_far_cents``.
    - "the next invoice": what the period close bills at ``next_invoice_at`` (the period end): the fee
      of the tier the subscription renews on (none after a cancel or a move to a free tier) for the
      next period, plus this period's overage (none for a trial), as billing.close bills it and
      /billing/'s "Next charge" says. ``next_total_cents``.
    ``fee_cents`` and ``estimated_total_cents`` (fee + overage) are the spend cap's measure: the most the
    period's bill may reach (tiers.services.subscription_spend_cap_set).
    """

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
    # This period: "trial" (free), "free" (a free tier), "unpaid" (past due), "paid" (billed in advance).
    fee_state: str = "paid"
    due_overage_cents: int = 0
    due_so_far_cents: int = 0
    # The next invoice; ``next_fee_tier`` "" when no fee renews (cancel, a free tier).
    next_invoice_at: datetime | None = None
    next_fee_tier: str = ""
    next_fee_cents: int = 0
    next_period_start: datetime | None = None
    next_period_end: datetime | None = None
    next_overage_cents: int = 0
    next_total_cents: int = 0
    ends_at_period_end: bool = False

    @property
    def trialing(self) -> bool:
        return self.fee_state == "trial"

    @property
    def quota_fraction(self) -> float | None:
        """Share of the included tokens used (for gauges; alerts compare integers, not this)."""
        if not self.included_tokens:
            return None
        return self.tokens_used / self.included_tokens


def _fee_state(subscription: Subscription) -> str:
    if not subscription.tier.is_paid:
        return "free"
    if subscription.status == subscription.Status.TRIALING:
        return "trial"
    if subscription.status == subscription.Status.PAST_DUE:
        return "unpaid"
    return "paid"


def usage_estimate_for_subscription(*, subscription: Subscription, now: datetime) -> UsageEstimate:
    """``usage_estimate`` for an already loaded subscription (with its tier and pending tier)."""
    from core.periods import period_containing
    from tiers.pricing import overage_line_values

    tier = subscription.tier
    # The quota's window (Entitlements.period_at), which is also the period the invoice bills.
    period_start, period_end = subscription.period_at(now)
    requests, tokens = usage_period_totals(team_id=subscription.team_id, start=period_start, end=period_end)
    overage = overage_line_values(tier=tier, tokens_used=tokens)
    overage_tokens, overage_cents = overage or (0, 0)
    fee_state = _fee_state(subscription)
    # A trial's usage is free: the close bills no overage for a period that ended a trial.
    due_overage = 0 if fee_state == "trial" else overage_cents
    # The tier the next period is billed at (billing.close applies a scheduled change at the period end).
    if subscription.cancel_at_period_end:
        upcoming = None
    elif subscription.pending_tier_id is not None:
        upcoming = subscription.pending_tier
    else:
        upcoming = tier
    next_fee_tier, next_fee, next_start, next_end = "", 0, None, None
    if upcoming is not None and upcoming.is_paid:
        next_fee_tier, next_fee = upcoming.name, upcoming.price_cents
        next_start, next_end = period_containing(subscription.billing_anchor, upcoming.billing_interval, period_end)
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
        fee_state=fee_state,
        due_overage_cents=due_overage,
        due_so_far_cents=due_overage,
        next_invoice_at=period_end,
        next_fee_tier=next_fee_tier,
        next_fee_cents=next_fee,
        next_period_start=next_start,
        next_period_end=next_end,
        next_overage_cents=due_overage,
        next_total_cents=next_fee + due_overage,
        ends_at_period_end=subscription.cancel_at_period_end,
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
