"""The database quota backend: one conditional UPDATE per request, on SQLite or PostgreSQL.

Every counter of a team lives in its one ``TeamQuotaState`` row, next to the start of the window it
counts. ``reserve`` is a single ``UPDATE ... WHERE <every limit has room> RETURNING``: it starts a
window's counter again from zero when the request belongs to a later window, checks all limits and
consumes them in one statement, so the row lock (PostgreSQL) or the database write lock (SQLite)
makes racing requests queue instead of over-admitting. A recorded request id is part of the same
WHERE clause (``NOT EXISTS`` a usage record), so an admitted request costs one SQL statement; only
the rare paths (no row yet, refused, recorded id) read the row afterwards to say why. A recorded id
is answered again only for the same request hash and within the retention
(``TIERLAB_REQUEST_ID_RETENTION_SECONDS``); otherwise it is refused as reused. The record stays, and
the unique (team, request id) with it, so an id older than the retention is refused rather than
admitted again: its settle could not record it, and it would be served uncounted.

``settle`` corrects the token counters and writes the usage record in one transaction. It updates
the quota row first: on PostgreSQL that row lock serialises the team's settles, so two settles of
one request id cannot both believe they recorded it (``usage_records_create`` counts before and
after its insert).

Windows compare with ``=``: a request whose window differs from the stored one starts the counter
again. A web node whose clock lags at a minute edge can so reset a newer minute early; NTP keeps
that to milliseconds, and it keeps simulated time (far-future windows) from poisoning real requests.

SQL statements per request: reserve 1 (admitted) or 2 (refused, duplicate) or 4 (the team's first
request: UPDATE, SELECT, INSERT, UPDATE); settle 4 in one transaction (the quota UPDATE, then
``usage_records_create``: COUNT, INSERT, COUNT), one UPDATE more when the request id was already
recorded (and one SELECT of the recorded hash); refund 1.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from core.sql import param, quoted_table
from usage.models import TeamQuotaState, UsageRecord
from usage.quotas.base import (
    REFUSAL_ORDER,
    UNLIMITED,
    Decision,
    Limit,
    LimitName,
    QuotaBackend,
    Reservation,
    UsageEvent,
    day_window,
    minute_window,
)
from usage.services import usage_records_create

# A new row's windows: before any real window, so the first request starts every counter from zero.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The column counting each limit, and the column holding that column's window start.
_COLUMN = {
    LimitName.REQUESTS_PER_MINUTE: ("minute_requests", "minute_start"),
    LimitName.TOKENS_PER_MINUTE: ("minute_tokens", "minute_start"),
    LimitName.REQUESTS_PER_DAY: ("day_requests", "day_start"),
    LimitName.MONTHLY_TOKENS: ("period_tokens", "period_start"),
}
# RETURNING / SELECT order of the counters.
_COUNTERS = ("minute_requests", "minute_tokens", "day_requests", "period_tokens")
_COUNTER_OF = {name: _COUNTERS.index(column) for name, (column, _) in _COLUMN.items()}


@dataclass(frozen=True)
class _Windows:
    minute: datetime
    day: datetime
    # None when no monthly limit applies: the period counters are then left alone.
    period: datetime | None


def _windows(limits: Sequence[Limit], now: datetime) -> _Windows:
    """The window starts a request counts in. Minute and day windows are counted even when their
    limits are absent (it costs nothing in the same UPDATE and keeps the row's numbers meaningful)."""
    by_name = {limit.name: limit for limit in limits}
    minute = by_name.get(LimitName.REQUESTS_PER_MINUTE) or by_name.get(LimitName.TOKENS_PER_MINUTE)
    day = by_name.get(LimitName.REQUESTS_PER_DAY)
    period = by_name.get(LimitName.MONTHLY_TOKENS)
    return _Windows(
        minute=minute.window_start if minute else minute_window(now)[0],
        day=day.window_start if day else day_window(now)[0],
        period=period.window_start if period else None,
    )


@functools.lru_cache(maxsize=1024)
def _adapted(vendor: str, value: datetime) -> Any:
    """The database's form of a window start (core.sql.param), per vendor. The same few windows recur
    on every request, and Django's conversion (to naive UTC text on SQLite) was a tenth of the hot
    path's time."""
    return param(value)


def _positive(expression: str) -> str:
    # Portable MAX(0, x): SQLite spells it MAX, PostgreSQL GREATEST.
    return f"CASE WHEN {expression} > 0 THEN {expression} ELSE 0 END"


def _current(column: str, start_column: str, param: str) -> str:
    """The counter as seen from the window ``param``: zero if the row still holds an older window."""
    return f"CASE WHEN {start_column} = %({param})s THEN {column} ELSE 0 END"


def _sql() -> dict[str, str]:
    quota = quoted_table(TeamQuotaState)
    record = quoted_table(UsageRecord)
    minute_requests = _current("minute_requests", "minute_start", "minute")
    minute_tokens = _current("minute_tokens", "minute_start", "minute")
    day_requests = _current("day_requests", "day_start", "day")
    period_tokens = _current("period_tokens", "period_start", "period")

    def reserve(with_period: bool) -> str:
        period_set = f", period_tokens = {period_tokens} + %(tokens)s, period_start = %(period)s" if with_period else ""
        period_check = f" AND {period_tokens} + %(tokens)s <= %(monthly_tokens)s" if with_period else ""
        return (
            f"UPDATE {quota} SET"  # noqa: S608 - identifiers from _meta, values as parameters
            f" minute_requests = {minute_requests} + 1,"
            f" minute_tokens = {minute_tokens} + %(tokens)s,"
            " minute_start = %(minute)s,"
            f" day_requests = {day_requests} + 1,"
            " day_start = %(day)s"
            f"{period_set}"
            " WHERE team_id = %(team)s"
            f" AND {minute_requests} + 1 <= %(requests_per_minute)s"
            f" AND {minute_tokens} + %(tokens)s <= %(tokens_per_minute)s"
            f" AND {day_requests} + 1 <= %(requests_per_day)s"
            f"{period_check}"
            f" AND NOT EXISTS (SELECT 1 FROM {record} WHERE team_id = %(team)s AND request_id = %(request_id)s)"
            f" RETURNING {', '.join(_COUNTERS)}"
        )

    def adjust(column: str, start_column: str, window: str, delta: str) -> str:
        # Only in the window that was reserved: a rolled-over counter belongs to later requests.
        return (
            f"{column} = CASE WHEN {start_column} = %({window})s"
            f" THEN {_positive(f'{column} + %({delta})s')} ELSE {column} END"
        )

    return {
        "reserve": reserve(with_period=False),
        "reserve_period": reserve(with_period=True),
        # Why a reserve changed nothing: is the request id recorded (and if so, the hash it was recorded
        # with, or NULL when that was before the retention cutoff), does the row exist, the counts. The
        # LEFT JOIN from a one-row table answers all of it in one statement.
        "explain": (
            f"SELECT EXISTS (SELECT 1 FROM {record} WHERE team_id = %(team)s AND request_id = %(request_id)s),"  # noqa: S608 - identifiers from _meta, values as parameters
            f" (SELECT request_hash FROM {record} WHERE team_id = %(team)s AND request_id = %(request_id)s"
            " AND created_at >= %(retained_since)s),"
            f" q.team_id, {_current('q.minute_requests', 'q.minute_start', 'minute')},"
            f" {_current('q.minute_tokens', 'q.minute_start', 'minute')},"
            f" {_current('q.day_requests', 'q.day_start', 'day')},"
            f" {_current('q.period_tokens', 'q.period_start', 'period')}"
            f" FROM (SELECT 1 AS one) AS d LEFT JOIN {quota} AS q ON q.team_id = %(team)s"
        ),
        "used": (
            f"SELECT {minute_requests}, {minute_tokens}, {day_requests}, {period_tokens}"  # noqa: S608 - identifiers from _meta, values as parameters
            f" FROM {quota} WHERE team_id = %(team)s"
        ),
        "adjust": (
            f"UPDATE {quota} SET"  # noqa: S608 - identifiers from _meta, values as parameters
            f" {adjust('minute_requests', 'minute_start', 'minute', 'requests')},"
            f" {adjust('minute_tokens', 'minute_start', 'minute', 'tokens')},"
            f" {adjust('day_requests', 'day_start', 'day', 'requests')},"
            f" {adjust('period_tokens', 'period_start', 'period', 'tokens')}"
            " WHERE team_id = %(team)s"
        ),
    }


class DatabaseQuotaBackend(QuotaBackend):
    """Quotas in ``TeamQuotaState`` rows of the default database (see the module docstring)."""

    # Reads after a refused UPDATE that find room again (a settle or refund freed some in between)
    # try the UPDATE again, this many times at most.
    max_attempts = 4

    def __init__(self) -> None:
        self._statements: dict[str, dict[str, str]] = {}

    def _statement(self, name: str) -> str:
        # Per database vendor (quoting), built once.
        vendor = connection.vendor
        if vendor not in self._statements:
            self._statements[vendor] = _sql()
        return self._statements[vendor][name]

    @staticmethod
    def _window_params(windows: _Windows) -> dict[str, Any]:
        vendor = connection.vendor
        return {
            "minute": _adapted(vendor, windows.minute),
            "day": _adapted(vendor, windows.day),
            "period": _adapted(vendor, windows.period) if windows.period is not None else None,
        }

    @staticmethod
    def _used(limits: Sequence[Limit], counters: Sequence[int]) -> dict[LimitName, int]:
        return {limit.name: int(counters[_COUNTER_OF[limit.name]]) for limit in limits}

    def reserve(
        self,
        *,
        team_id: int,
        request_id: str,
        limits: Sequence[Limit],
        tokens: int,
        now: datetime,
        request_id_is_new: bool = False,  # not used: the duplicate check rides in the same statement
        request_hash: str = "",
    ) -> Decision:
        windows = _windows(limits, now)
        capacity = {name: UNLIMITED for name in LimitName}
        for limit in limits:
            capacity[limit.name] = limit.effective_capacity
        params = {
            **self._window_params(windows),
            "team": team_id,
            "request_id": request_id,
            "tokens": tokens,
            **{name.value: value for name, value in capacity.items()},
        }
        reserve_sql = self._statement("reserve_period" if windows.period is not None else "reserve")
        with connection.cursor() as cursor:
            for _ in range(self.max_attempts):
                cursor.execute(reserve_sql, params)
                row = cursor.fetchone()
                if row is not None:
                    return Decision.reserved(
                        team_id=team_id,
                        request_id=request_id,
                        tokens=tokens,
                        limits=limits,
                        now=now,
                        used=self._used(limits, row),
                        request_hash=request_hash,
                        request_id_is_new=request_id_is_new,
                    )

                retention = timedelta(seconds=settings.TIERLAB_REQUEST_ID_RETENTION_SECONDS)
                params["retained_since"] = param(now - retention)
                cursor.execute(self._statement("explain"), params)
                recorded, recorded_hash, row_team, *counters = cursor.fetchone()
                used = self._used(limits, counters)
                if recorded:
                    # The same request is answered again; another one (or one past the retention) is refused.
                    if recorded_hash == request_hash:
                        return Decision.repeated(used=used)
                    return Decision.id_reused(used=used)
                if row_team is None:
                    # The team's first request: create its row (a racing request may do the same).
                    TeamQuotaState.objects.bulk_create(
                        [TeamQuotaState(team_id=team_id, minute_start=_EPOCH, day_start=_EPOCH, period_start=_EPOCH)],
                        ignore_conflicts=True,
                    )
                    continue
                refused = Decision.refused(limits=limits, used=used, tokens=tokens, now=now)
                if refused is not None:
                    return refused
                # Room again since the UPDATE: another request settled or refunded. Try again.
        # Only under a storm of refunds racing this request: refuse it as "slow down".
        names = {limit.name for limit in limits}
        denied = next((name for name in reversed(REFUSAL_ORDER) if name in names), LimitName.REQUESTS_PER_MINUTE)
        return Decision(allowed=False, denied=denied, retry_after=1, used=used)

    def _adjust(self, cursor: Any, reservation: Reservation, *, requests: int, tokens: int) -> None:
        params = {
            **self._window_params(_windows(reservation.limits, reservation.reserved_at)),
            "team": reservation.team_id,
            "requests": requests,
            "tokens": tokens,
        }
        cursor.execute(self._statement("adjust"), params)

    def settle(self, *, reservation: Reservation, event: UsageEvent) -> bool:
        with transaction.atomic(), connection.cursor() as cursor:
            # First, so the row lock orders this team's settles (see the module docstring).
            self._adjust(cursor, reservation, requests=0, tokens=event.total_tokens - reservation.tokens)
            if usage_records_create(events=[event]):
                return True
            # Recorded before: a request with the same id raced this one. The same request is counted
            # once: give it all back. A different one was served too, so it stays counted.
            recorded_hash = (
                UsageRecord.objects.filter(team_id=event.team_id, request_id=event.request_id)
                .values_list("request_hash", flat=True)
                .first()
            )
            if recorded_hash == event.request_hash:
                self._adjust(cursor, reservation, requests=-1, tokens=-event.total_tokens)
            return False

    def refund(self, *, reservation: Reservation) -> None:
        with connection.cursor() as cursor:
            self._adjust(cursor, reservation, requests=-1, tokens=-reservation.tokens)

    def used(self, *, team_id: int, limits: Sequence[Limit]) -> dict[LimitName, int]:
        # Absent limits' windows are not reported, so any ``now`` gives the same answer.
        params = {**self._window_params(_windows(limits, datetime.now(tz=UTC))), "team": team_id}
        with connection.cursor() as cursor:
            cursor.execute(self._statement("used"), params)
            row = cursor.fetchone()
        return self._used(limits, row or (0, 0, 0, 0))
