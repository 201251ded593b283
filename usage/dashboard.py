"""Everything the subscriber dashboard (/dashboard/) shows, assembled by one selector.

``dashboard_for_team`` reads a few cheap sources and returns a frozen ``Dashboard``; the view only
renders it. Where each figure comes from (and why):
- gauges: the per-minute and per-day counts from the quota backend (the same counters that admit
  requests, so the page agrees with the ``x-ratelimit-*`` headers); "this period" tokens from
  ``usage_estimate`` (exact: rollups plus edges and unfolded records), as is the estimated bill.
- the chart: ``usage_series`` (rollups, plus the records not folded yet), one query pair whatever the
  range, so a year of hourly history costs the same as a day.
Queries: subscription (1), period totals (2), entitlements (1, cached per process), quota counters
(1 on the database backend, none on Redis), series (2), alerts (1).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from django.utils.functional import cached_property

from core.charts import ChartSeries, bar_chart_svg, format_number, gauge_level, gauge_percent, line_chart_svg
from usage.rollups import bucket_floor, bucket_step

if TYPE_CHECKING:
    from django.utils.safestring import SafeString

    from accounts.models import Team
    from tiers.models import Subscription
    from tiers.selectors import Entitlements
    from usage.models import UsageAlert
    from usage.selectors import UsageEstimate

# ?range= values: the current billing period (default) or the last N days, today included.
RANGE_PERIOD = "period"
RANGE_CHOICES: dict[str, str] = {
    RANGE_PERIOD: "This period",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "90d": "Last 90 days",
    "365d": "Last 365 days",
}
_RANGE_DAYS = {"7d": 7, "30d": 30, "90d": 90, "365d": 365}
# Up to two days, days would be one or two bars: show hours instead.
HOURLY_UP_TO = timedelta(days=2)


@dataclass(frozen=True)
class Gauge:
    """One limit: how much of it is used in its current window. ``limit`` None is unlimited."""

    key: str
    label: str
    window: str
    used: int
    limit: int | None
    unit: str
    # What passing 100% means: a refusal, or (the included tokens of a tier that bills overage) a charge.
    over_note: str = "limit reached"

    @property
    def percent(self) -> int | None:
        return gauge_percent(self.used, self.limit)

    @property
    def level(self) -> str:
        return gauge_level(self.percent)

    @property
    def bar_percent(self) -> int:
        """The drawn width: over-use fills the bar, it does not overflow it."""
        return min(self.percent or 0, 100)


@dataclass(frozen=True)
class UsageRow:
    """One period of the table under the chart: per model (in ``Dashboard.models`` order) and totals."""

    label: str
    period: datetime
    requests: list[int]
    tokens: list[int]

    @property
    def cells(self) -> list[tuple[str, str]]:
        """(requests, tokens) per model, formatted for the table. Formatted here, not with the
        template's intcomma: for a year of days that filter was half the page's rendering time."""
        return [(format_number(r), format_number(t)) for r, t in zip(self.requests, self.tokens, strict=True)]

    @property
    def totals_display(self) -> tuple[str, str]:
        return format_number(self.total_requests), format_number(self.total_tokens)

    @property
    def total_requests(self) -> int:
        return sum(self.requests)

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens)


@dataclass(frozen=True)
class Dashboard:
    team: Team
    subscription: Subscription | None
    now: datetime
    gauges: list[Gauge]
    estimate: UsageEstimate | None
    alerts: list[UsageAlert]
    range_key: str
    range_start: datetime
    range_end: datetime
    granularity: str
    labels: list[str]
    models: list[str]
    rows: list[UsageRow]
    allowed_models: list[str]

    @property
    def days_left(self) -> int | None:
        """Whole days until the period ends (0 on its last day)."""
        if self.estimate is None:
            return None
        return max((self.estimate.period_end - self.now).days, 0)

    @property
    def range_label(self) -> str:
        return RANGE_CHOICES[self.range_key]

    @property
    def unit_label(self) -> str:
        return "hour" if self.granularity == "hour" else "day"

    @property
    def rows_with_usage(self) -> list[UsageRow]:
        return [row for row in self.rows if row.total_requests or row.total_tokens]

    @property
    def range_totals(self) -> tuple[int, int]:
        return sum(r.total_requests for r in self.rows), sum(r.total_tokens for r in self.rows)

    @property
    def model_totals(self) -> list[tuple[str, str, str]]:
        """(model, requests, tokens) over the range, in column order, formatted for the table."""
        return [
            (
                model,
                format_number(sum(r.requests[i] for r in self.rows)),
                format_number(sum(r.tokens[i] for r in self.rows)),
            )
            for i, model in enumerate(self.models)
        ]

    @cached_property
    def tokens_chart(self) -> SafeString:
        series = [ChartSeries(m, [r.tokens[i] for r in self.rows]) for i, m in enumerate(self.models)]
        return bar_chart_svg(
            labels=self.labels,
            series=series,
            title=f"Tokens per {self.unit_label} by model, {self.range_label.lower()}",
            unit="tokens",
            stacked=True,
        )

    @cached_property
    def requests_chart(self) -> SafeString:
        series = [ChartSeries(m, [r.requests[i] for r in self.rows]) for i, m in enumerate(self.models)]
        return line_chart_svg(
            labels=self.labels,
            series=series,
            title=f"Requests per {self.unit_label} by model, {self.range_label.lower()}",
            unit="requests",
            height=180,
        )


def range_window(*, range_key: str, now: datetime, period_start: datetime | None) -> tuple[datetime, datetime]:
    """[start, end) of a ?range= choice at ``now``: the billing period so far, or the last N UTC days
    (today included, so "7d" is today and the six days before it)."""
    if range_key == RANGE_PERIOD and period_start is not None:
        return period_start, now
    days = _RANGE_DAYS.get(range_key, 30)  # "period" without a subscription: a month
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days - 1), now


def _buckets(*, start: datetime, end: datetime, granularity: str) -> list[datetime]:
    """Every UTC hour or day overlapping [start, end), so the axis has no gaps where nothing was used."""
    step = bucket_step(granularity)
    current = bucket_floor(start, granularity)
    buckets = []
    while current < end:
        buckets.append(current)
        current += step
    return buckets


def _label(period: datetime, granularity: str) -> str:
    # Unambiguous and short: "Mar 7" for days, "Mar 7 14:00" for hours (UTC, like the rollups).
    text = f"{period:%b} {period.day}"
    return f"{text} {period:%H}:00" if granularity == "hour" else text


def _gauges(*, entitlements: Entitlements | None, now: datetime, estimate: UsageEstimate | None) -> list[Gauge]:
    from usage.metering import limits_for
    from usage.quotas import get_quota_backend
    from usage.quotas.base import LimitName

    if entitlements is None:
        return []
    team_id = entitlements.team_id
    limits = limits_for(entitlements=entitlements, now=now)
    windowed = [limit for limit in limits if limit.name is not LimitName.MONTHLY_TOKENS]
    used = get_quota_backend().used(team_id=team_id, limits=windowed)
    by_name = {limit.name: limit for limit in limits}
    capped = entitlements.spend_capped_tokens
    period_over_note = "limit reached"
    if capped is not None:
        period_label, period_limit = "Tokens this period (spend cap)", capped
        period_over_note = "spend cap reached"
    elif entitlements.bills_overage:
        period_label, period_limit = "Tokens this period (included)", entitlements.monthly_tokens
        period_over_note = "the rest is billed as overage"
    else:
        period_label, period_limit = "Tokens this period", entitlements.monthly_tokens
    return [
        Gauge(
            "requests_minute", "Requests this minute", "per minute",
            used.get(LimitName.REQUESTS_PER_MINUTE, 0), by_name[LimitName.REQUESTS_PER_MINUTE].capacity, "requests",
        ),
        Gauge(
            "tokens_minute", "Tokens this minute", "per minute",
            used.get(LimitName.TOKENS_PER_MINUTE, 0), by_name[LimitName.TOKENS_PER_MINUTE].capacity, "tokens",
        ),
        Gauge(
            "requests_day", "Requests today", "per day (UTC)",
            used.get(LimitName.REQUESTS_PER_DAY, 0), by_name[LimitName.REQUESTS_PER_DAY].capacity, "requests",
        ),
        Gauge(
            "tokens_period", period_label, "per billing period",
            estimate.tokens_used if estimate else 0, period_limit, "tokens", period_over_note,
        ),
    ]  # fmt: skip


def dashboard_for_team(*, team: Team, now: datetime, range_key: str = RANGE_PERIOD) -> Dashboard:
    """The dashboard of ``team`` at ``now`` with the chart over ``range_key`` (one of RANGE_CHOICES;
    anything else raises ValueError: the view validates input first). Only ``team``'s data is read."""
    from tiers.selectors import entitlements_for_team, subscription_current
    from usage.selectors import usage_alert_list_recent, usage_estimate_for_subscription, usage_series

    if range_key not in RANGE_CHOICES:
        raise ValueError(f"unknown range {range_key!r}")
    subscription = subscription_current(team=team)
    estimate = usage_estimate_for_subscription(subscription=subscription, now=now) if subscription else None
    # Cached per process (the model API reads the same object), so the allowed models cost no query.
    entitlements = entitlements_for_team(team_id=team.pk) if subscription else None
    gauges = _gauges(entitlements=entitlements, now=now, estimate=estimate)

    start, end = range_window(range_key=range_key, now=now, period_start=estimate.period_start if estimate else None)
    granularity = "hour" if end - start <= HOURLY_UP_TO else "day"
    # Through the end of the current hour or day, so a request made this very second is charted too.
    end = bucket_floor(now, granularity) + bucket_step(granularity)
    series = usage_series(team_id=team.pk, start=start, end=end, granularity=granularity)
    buckets = _buckets(start=start, end=end, granularity=granularity)
    # Models with the most tokens first, so the largest series sits at the bottom of the stack.
    totals: dict[str, int] = {}
    for row in series:
        totals[row["model"]] = totals.get(row["model"], 0) + row["total_tokens"]
    models = sorted(totals, key=lambda m: (-totals[m], m))
    column = {m: i for i, m in enumerate(models)}
    by_period = {b: ([0] * len(models), [0] * len(models)) for b in buckets}
    for row in series:
        requests, tokens = by_period.setdefault(row["period"], ([0] * len(models), [0] * len(models)))
        requests[column[row["model"]]] += row["requests"]
        tokens[column[row["model"]]] += row["total_tokens"]
    rows = [
        UsageRow(label=_label(period, granularity), period=period, requests=values[0], tokens=values[1])
        for period, values in sorted(by_period.items())
    ]
    return Dashboard(
        team=team,
        subscription=subscription,
        now=now,
        gauges=gauges,
        estimate=estimate,
        alerts=usage_alert_list_recent(team_id=team.pk, limit=5),
        range_key=range_key,
        range_start=start,
        range_end=end,
        granularity=granularity,
        labels=[row.label for row in rows],
        models=models,
        rows=rows,
        allowed_models=sorted(entitlements.allowed_models) if entitlements else [],
    )
