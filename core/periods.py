"""Billing-period arithmetic.

Periods are anchored to the moment a subscription starts (the "billing anchor"), as Stripe and
Zulip's billing do. Adding months clamps to the last day of a shorter month: a subscription started
on Jan 31 renews on Feb 28 (Feb 29 in leap years), then on Mar 31 again, because every period end is
computed from the anchor and the period count, never from the previous (already clamped) end.
Computing from the previous end would drift: Jan 31 -> Feb 28 -> Mar 28 -> ...
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime


def add_months(anchor: datetime, months: int) -> datetime:
    """``anchor`` plus ``months`` calendar months, the day clamped to the target month's length."""
    month_index = anchor.month - 1 + months
    year = anchor.year + month_index // 12
    month = month_index % 12 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def month_first(moment: date | datetime) -> date:
    """The first day of the calendar month containing ``moment`` (a date, or an aware datetime taken in
    UTC): how months are named wherever TierLab counts by calendar month (statements, licences,
    analytics)."""
    if isinstance(moment, datetime):
        moment = moment.astimezone(UTC).date()
    return moment.replace(day=1)


def interval_months(interval: str) -> int:
    """Months in one billing interval ("month" or "year")."""
    return {"month": 1, "year": 12}[interval]


def period_bounds(anchor: datetime, interval: str, index: int) -> tuple[datetime, datetime]:
    """Start and end of the ``index``-th period (0-based) of a subscription anchored at ``anchor``."""
    step = interval_months(interval)
    return add_months(anchor, step * index), add_months(anchor, step * (index + 1))


def period_containing(anchor: datetime, interval: str, now: datetime) -> tuple[datetime, datetime]:
    """The period of a subscription anchored at ``anchor`` that contains ``now``.

    Used where usage must be counted per period even if the billing engine has not advanced the
    subscription's stored period yet (free tiers are never invoiced, so nothing else advances them).
    ``now`` may be before the anchor: a trial anchors the subscription at the trial's end (the first
    paid period starts there), so during the trial ``now`` lies in a period before the anchor (negative
    index). That keeps trial usage in a quota window of its own instead of the first paid period's.
    """
    step = interval_months(interval)
    months = (now.year - anchor.year) * 12 + (now.month - anchor.month)
    index = months // step  # floor division: negative before the anchor
    start, end = period_bounds(anchor, interval, index)
    while now < start:  # day/time of month not reached yet: the previous period
        index -= 1
        start, end = period_bounds(anchor, interval, index)
    while now >= end:
        index += 1
        start, end = period_bounds(anchor, interval, index)
    return start, end


def subscription_period_at(
    *, anchor: datetime, interval: str, period_start: datetime, period_end: datetime, now: datetime
) -> tuple[datetime, datetime]:
    """The billing period a subscription is in at ``now``: what the quota's monthly window, the
    dashboard's "current period" and its estimate all use, so they agree with /billing/ and the invoice.

    The stored period (``current_period_start``/``_end``) while ``now`` lies in it: it is the billing
    engine's own record, and the only place a trial's period exists. A trial runs from its start to its
    end (say Dec 4 -> Dec 11) and moves the anchor to its end (the first paid period starts there), so
    counting backwards from the anchor would give a month ending at the trial's end (Nov 11 -> Dec 11),
    weeks before the team even signed up. Outside the stored period (a free tier, whose stored period
    nothing advances; a paid one the period close has not advanced yet) the period containing ``now`` is
    computed from the anchor, which after a trial is where the paid periods start.
    """
    if period_start <= now < period_end:
        return period_start, period_end
    return period_containing(anchor, interval, now)


# --- The same arithmetic in SQL (PostgreSQL), for set-based statements (billing/close_pg.py) ----------
# Twins of add_months and period_containing above, kept beside them so the rule stays in one place; a
# test compares them over month ends, leap years and negative indexes (tests/core/test_periods_sql.py).
# Every moment is taken in UTC, as the Python functions see the aware datetimes Django reads: the
# statements run with the session's TimeZone set to UTC (Django's PostgreSQL connections are, with
# USE_TZ; billing/close_pg.py sets it for its transaction), so timestamptz arithmetic and extract() work
# in UTC without an AT TIME ZONE conversion per call.


def add_months_sql(moment: str, months: str) -> str:
    """SQL: ``moment`` (timestamptz) plus ``months`` (an integer expression) calendar months, the day
    clamped to the target month's length (PostgreSQL's month interval arithmetic clamps as add_months
    does, and adding from the anchor each time keeps it from drifting)."""
    return f"(({moment}) + make_interval(months => ({months})::int))"


def period_index_sql(anchor: str, step: str, moment: str) -> str:
    """SQL: the index of the period (of ``step`` months, anchored at ``anchor``) containing ``moment``,
    as period_containing computes it: the month difference floored to whole periods, minus one when
    that period's start (clamped day, time of day) is still after ``moment``. (Its end is always after
    ``moment``: it lies in a later calendar month.)"""

    def month_number(ts: str) -> str:
        return f"(extract(year FROM {ts}) * 12 + extract(month FROM {ts}))"

    first = f"floor(({month_number(moment)} - {month_number(anchor)}) / ({step}))::int"
    return f"({first} - CASE WHEN {add_months_sql(anchor, f'{first} * ({step})')} > ({moment}) THEN 1 ELSE 0 END)"


def iso_utc_sql(moment: str) -> str:
    """SQL: ``moment`` as Python's ``isoformat()`` writes an aware UTC datetime
    (``2026-03-01T06:00:00+00:00``, with ``.ffffff`` only when there are microseconds)."""
    utc = f"({moment})"
    return (
        f"(to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN mod(extract(microseconds FROM {utc})::bigint,"
        f" 1000000) <> 0 THEN to_char({utc}, '.US') ELSE '' END || '+00:00')"
    )
