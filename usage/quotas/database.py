"""The database quota backend: conditional UPDATEs in one transaction per step, on SQLite or PostgreSQL.

Every counter of a team lives in its one ``TeamQuotaState`` row, next to the start of the window it
counts. Each step is ONE transaction whose first statement is an UPDATE of that row, so the row lock
(PostgreSQL) or the database write lock (SQLite, ``BEGIN IMMEDIATE``) orders the team's steps, and each
later statement of the step sees everything the team's earlier steps committed:

- ``consume`` (a non-streaming request): ``UPDATE ... WHERE <every limit has room> RETURNING`` checks
  all limits with the reserved tokens and consumes the actual ones, starting a window's counter again
  from zero when the request belongs to a later window; then the usage record is inserted (``INSERT
  ... SELECT ... WHERE NOT EXISTS <a reservation holding the id> ON CONFLICT (team, request_key) DO
  NOTHING``). Both or neither: a failure anywhere rolls the counters back with the record, so counters
  never drift above records (issue 12, finding 5).
- ``reserve`` (a stream): the same UPDATE, then a ``QuotaReservation`` row that holds the request id
  (pending: unique per team and id) and says what to give back.
- ``settle``: the token correction, the reservation's DELETE and the record's INSERT. A reservation
  already gone (swept or refunded) rolls it all back: nothing is counted or recorded.
- ``refund`` and ``sweep``: the counts given back and the reservation deleted, once.

When the id turns out to be held (the INSERT does nothing), the step is rolled back and one SELECT says
why: pending (the same request: in progress; another: reused), recorded within the retention
(``TIERLAB_REQUEST_ID_RETENTION_SECONDS``: answered again, or reused), or recorded longer ago: then
the old record gives the id up (``request_key`` to NULL; usage.services.usage_request_ids_release does
that for every record after the retention) and the step runs again. The same SELECT explains a refusal
and notices the team's missing row.

Windows compare with ``=``: a request whose window differs from the stored one starts the counter
again. A web node whose clock lags at a minute edge can so reset a newer minute early; NTP keeps
that to milliseconds, and it keeps simulated time (far-future windows) from poisoning real requests.

A database that cannot answer (``OperationalError``, ``InterfaceError``) raises
``QuotaBackendUnavailable``; its transaction was rolled back, so nothing was counted.

SQL statements per request: consume 2 in one transaction (UPDATE, INSERT); reserve 2 in one
transaction (UPDATE, INSERT); settle 3 in one transaction (UPDATE, DELETE, INSERT); refund 2. A
refusal, a held id or the team's first request add the SELECT (and a retry). The statements are built in
usage/quotas/database_sql.py.

On PostgreSQL an admitted consume or reserve is ONE statement, its own transaction (issue 17: the two
statements kept 0.22 of the unmetered endpoint). When the key's last-used time is due (once a minute
per key and process, usage.services) a consume moves it in the same statement (a CTE ``k``), not in an
UPDATE of its own: with thousands of active keys that UPDATE, through the ORM, came with most requests.

    WITH q AS (SELECT xmin FROM quota WHERE team = %s AND <every limit has room> FOR NO KEY UPDATE),
         s AS (SELECT <q's xmin> = <the statement snapshot's xmin of the row> AS current),
         i AS (INSERT INTO <record | reservation> SELECT ... FROM q WHERE NOT EXISTS <the id held elsewhere>
               AND (SELECT current FROM s) ON CONFLICT DO NOTHING RETURNING id),
         u AS (UPDATE quota SET <the charge> WHERE team = %s AND EXISTS (SELECT 1 FROM i) RETURNING counters)
    SELECT u.*, (SELECT id FROM i), NOT (SELECT current FROM s) FROM (SELECT 1) AS d LEFT JOIN u ON true

It is exact for the same reasons as the transaction: q locks the team's row and, having waited for a
concurrent step, checks the room on the row's newest version (READ COMMITTED re-evaluates a locking
clause's WHERE on it); u charges that version, still locked; the insert's unique keys do not depend on
the snapshot. What does depend on it is the NOT EXISTS over the other table (a reservation holding the
id for a record, a record for a reservation): the statement's snapshot predates the lock, so a step of
the same team that committed while this one waited is not in it. Every step updates the team's row
first, so such a step changed the row's ``xmin``: when the locked version's differs from the
snapshot's (s), nothing is inserted or charged, and the last column says that this race was all that
stopped the statement. Whenever the statement changes nothing for another reason (no room, a held id,
the team's first request), the step takes the transactional path above, which says why.

Under a server's threads (granian: 2 workers x 16 threads) every thread serving a team waited for its
row, and most lost that race: for one team 1.83 SQL writes per request of the transactional path, and
c/a 0.20-0.22 in bench/api_overhead.py (issue 17). Three changes keep the race rare and cheap; the
exactness above never depends on winning it:

- An id generated for this request (the client sent no ``X-Request-Id``: ``request_id_is_new``) is
  held by nothing, and nothing can hold it before this step commits: the client learns it only from
  this step's response. Its statement (``*_new``) has neither the NOT EXISTS nor s, so a wait costs
  nothing; what is left is exact for the reasons above (q's room check on the newest version, u's
  charge of it, the unique keys), whatever committed during the wait.
- A client's id: a statement that lost only the race runs again, with a new snapshot, up to
  ``one_statement_attempts`` times before the transactional path. Each run is exact by itself, and a
  run that lost inserted and charged nothing.
- And the checked statements of a team's steps run one at a time per process, under one of a fixed
  set of thread locks (``team_lock_stripes``, by team id modulo their number: no memory per team), so
  at most one thread per process waits for the team's row, and a race is lost only to another process
  or to a transactional step (settle, refund, a refusal's path). The lock orders nothing across
  processes and decides nothing: the row lock still does. Teams sharing a stripe wait for each other's
  statement within a process. Generated ids do not take it: their statement has no race to lose, and
  the lock made a hot team's queue wait for the GIL at each turn (the holder must get the GIL back to
  release it, behind the threads running Python). Measured with 2 processes x 12 threads on one team
  (about 2 ms of Python work per request, 4 interleaved rounds): client ids 329 req/s with the lock,
  177 without (races retried); generated ids 420 req/s with it, 517 without.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction

from core.sql import hot_cursor, param
from usage.models import QuotaReservation, TeamQuotaState
from usage.quotas.base import (
    REFUSAL_ORDER,
    UNLIMITED,
    Decision,
    Limit,
    LimitName,
    QuotaBackend,
    QuotaBackendUnavailable,
    Reservation,
    UsageEvent,
    day_window,
    minute_window,
)
from usage.quotas.database_sql import COUNTERS, statements
from usage.services import (
    api_key_mark_due,
    usage_record_insert,
    usage_record_values,
    usage_records_inserted,
)

# A new row's windows: before any real window, so the first request starts every counter from zero.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The column counting each limit, and the column holding that column's window start.
_COLUMN = {
    LimitName.REQUESTS_PER_MINUTE: ("minute_requests", "minute_start"),
    LimitName.TOKENS_PER_MINUTE: ("minute_tokens", "minute_start"),
    LimitName.REQUESTS_PER_DAY: ("day_requests", "day_start"),
    LimitName.MONTHLY_TOKENS: ("period_tokens", "period_start"),
}
_COUNTER_OF = {name: COUNTERS.index(column) for name, (column, _) in _COLUMN.items()}


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


class _Held(Exception):
    """The request id is held (or the reservation is gone): roll the step's transaction back."""


# The database cannot answer: the request is refused with 503 (its transaction was rolled back).
_UNAVAILABLE = (OperationalError, InterfaceError)


class DatabaseQuotaBackend(QuotaBackend):
    """Quotas in ``TeamQuotaState`` rows of the default database (see the module docstring)."""

    # Reads after a refused UPDATE that find room again (a settle or refund freed some in between)
    # try the UPDATE again, this many times at most.
    max_attempts = 4
    # PostgreSQL: how many times one step runs the one statement that lost the race for the team's row
    # (another step committed while it waited), before it takes the transactional path.
    one_statement_attempts = 3
    # PostgreSQL: the one statements of a team's steps with clients' request ids run one at a time per
    # process, under the team's stripe of these locks (team id modulo their number: a fixed set, nothing
    # kept per team), so at most one such thread per process waits for a team's row (the module
    # docstring says why, and why generated ids do not take them).
    team_lock_stripes = 64

    def __init__(self) -> None:
        self._statements: dict[str, dict[str, str]] = {}
        self._team_locks = tuple(threading.Lock() for _ in range(self.team_lock_stripes))

    def _statement(self, name: str) -> str:
        # Per database vendor (quoting), built once.
        vendor = connection.vendor
        if vendor not in self._statements:
            self._statements[vendor] = statements()
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

    def _params(
        self, *, team_id: int, request_id: str, limits: Sequence[Limit], tokens: int, charged: int, now: datetime,
        request_hash: str,
    ) -> dict[str, Any]:  # fmt: skip
        capacity = {name: UNLIMITED for name in LimitName}
        for limit in limits:
            capacity[limit.name] = limit.effective_capacity
        retention = timedelta(seconds=settings.TIERLAB_REQUEST_ID_RETENTION_SECONDS)
        return {
            **self._window_params(_windows(limits, now)),
            "team": team_id,
            "request_id": request_id,
            "request_hash": request_hash,
            "tokens": tokens,
            "charged": charged,
            "reserved_at": param(now),
            "retained_since": param(now - retention),
            **{name.value: value for name, value in capacity.items()},
        }

    def reserve(
        self,
        *,
        team_id: int,
        request_id: str,
        limits: Sequence[Limit],
        tokens: int,
        now: datetime,
        request_id_is_new: bool = False,
        request_hash: str = "",
    ) -> Decision:
        params = self._params(
            team_id=team_id, request_id=request_id, limits=limits, tokens=tokens, charged=tokens, now=now,
            request_hash=request_hash,
        )  # fmt: skip

        def reserved(cursor: Any, row: Sequence[int]) -> Decision:
            cursor.execute(self._statement("reservation_insert"), params)
            held = cursor.fetchone()
            if held is None:
                raise _Held
            return decision(row, held[0])

        def decision(row: Sequence[int], reservation_id: int) -> Decision:
            return Decision.reserved(
                team_id=team_id,
                request_id=request_id,
                tokens=tokens,
                limits=limits,
                now=now,
                used=self._used(limits, row),
                request_hash=request_hash,
                request_id_is_new=request_id_is_new,
                token=str(reservation_id),
            )

        row = self._one_statement("reserve_one", params, new=request_id_is_new)
        if row is not None:
            return decision(row[:4], row[4])
        return self._charge(params=params, limits=limits, tokens=tokens, now=now, then=reserved)

    def consume(
        self,
        *,
        team_id: int,
        request_id: str,
        limits: Sequence[Limit],
        tokens: int,
        event: UsageEvent,
        now: datetime,
        request_id_is_new: bool = False,
    ) -> Decision:
        params = self._params(
            team_id=team_id, request_id=request_id, limits=limits, tokens=tokens, charged=event.total_tokens,
            now=now, request_hash=event.request_hash,
        )  # fmt: skip

        def recorded(cursor: Any, row: Sequence[int]) -> Decision:
            if not usage_record_insert(event=event):
                raise _Held
            return Decision(allowed=True, used=self._used(limits, row))

        if connection.vendor == "postgresql":
            params.update((f"r{n}", value) for n, value in enumerate(usage_record_values(event=event)))
            mark = api_key_mark_due(event=event)
            if mark:
                params.update(api_key=event.api_key_id, used_at=param(event.created_at))
            row = self._one_statement("consume_one", params, mark=mark, new=request_id_is_new)
            if row is not None:
                usage_records_inserted(events=[event], keys_marked=mark)
                return Decision(allowed=True, used=self._used(limits, row[:4]))
        return self._charge(params=params, limits=limits, tokens=tokens, now=now, then=recorded)

    def _one_statement(
        self, name: str, params: dict[str, Any], *, mark: bool = False, new: bool = False
    ) -> Sequence[Any] | None:
        """PostgreSQL: charge and insert (the record, or the reservation) in ONE statement, its own
        transaction (``mark``: and move the key's last-used time; ``new``: the request id was generated
        for this request, so nothing else can hold it and the statement checks no other holder); the
        counters and the inserted id, or None when it changed nothing (no room, the id held, the team's
        first request, or it lost the race for the row ``one_statement_attempts`` times: see the module
        docstring), and the caller takes the transactional path, which says why."""
        if connection.vendor != "postgresql":
            return None
        statement = self._statement(
            f"{name}{'_period' if params['period'] is not None else ''}{'_mark' if mark else ''}{'_new' if new else ''}"
        )
        try:
            # A generated id's statement never loses (it has no race to lose), so it queues on the row
            # lock in the database alone: the thread lock would only add the GIL to the queue's turns.
            lock = contextlib.nullcontext() if new else self._team_locks[params["team"] % self.team_lock_stripes]
            with lock:
                for _ in range(self.one_statement_attempts):
                    with hot_cursor() as cursor:  # prepared once per connection (core.sql.hot_cursor)
                        cursor.execute(statement, params)
                        row = cursor.fetchone()
                    if row[0] is not None:
                        return row[:5]
                    if not row[5]:  # not a lost race: no room, the id held, or no row yet
                        return None
        except _UNAVAILABLE as error:
            raise QuotaBackendUnavailable(f"database quota backend: {error}") from error
        return None

    def _charge(
        self,
        *,
        params: dict[str, Any],
        limits: Sequence[Limit],
        tokens: int,
        now: datetime,
        then: Callable[[Any, Sequence[int]], Decision],
    ) -> Decision:
        """Charge every limit and do ``then`` (hold a reservation, or store the usage record) in ONE
        transaction; ``then`` raising _Held rolls the charge back. When nothing was charged, _explain
        says why (a refusal, a held or recorded id) or that the step should run again."""
        charge_sql = self._statement("charge_period" if params["period"] is not None else "charge")
        used: dict[LimitName, int] = {}
        try:
            for _ in range(self.max_attempts):
                try:
                    with transaction.atomic(), connection.cursor() as cursor:
                        cursor.execute(charge_sql, params)
                        row = cursor.fetchone()
                        if row is not None:
                            return then(cursor, row)
                except _Held:
                    pass
                decision, used = self._explain(params=params, limits=limits, tokens=tokens, now=now)
                if decision is not None:
                    return decision
        except _UNAVAILABLE as error:
            raise QuotaBackendUnavailable(f"database quota backend: {error}") from error
        return self._storm(limits, used)

    def _explain(
        self, *, params: dict[str, Any], limits: Sequence[Limit], tokens: int, now: datetime
    ) -> tuple[Decision | None, dict[LimitName, int]]:
        """Why a step changed nothing, as the decision to return; None: try again (the team's row was
        created, an expired record gave its id up, or room appeared since the UPDATE)."""
        with connection.cursor() as cursor:
            cursor.execute(self._statement("explain"), params)
            pending_hash, record_id, recorded_hash, retained, row_team, *counters = cursor.fetchone()
            used = self._used(limits, counters)
            if pending_hash is not None:
                return Decision.held(
                    held_hash=pending_hash, pending=True, request_hash=params["request_hash"], used=used
                ), used
            if record_id is not None and retained:
                return Decision.held(
                    held_hash=recorded_hash, pending=False, request_hash=params["request_hash"], used=used
                ), used
            if record_id is not None:
                cursor.execute(self._statement("release"), params)
                return None, used
        if row_team is None:
            # The team's first request: create its row (a racing request may do the same).
            TeamQuotaState.objects.bulk_create(
                [TeamQuotaState(team_id=params["team"], minute_start=_EPOCH, day_start=_EPOCH, period_start=_EPOCH)],
                ignore_conflicts=True,
            )
            return None, used
        # None when there is room again since the UPDATE (another request settled or refunded).
        return Decision.refused(limits=limits, used=used, tokens=tokens, now=now), used

    @staticmethod
    def _storm(limits: Sequence[Limit], used: dict[LimitName, int]) -> Decision:
        # Only under a storm of refunds racing this request: refuse it as "slow down".
        names = {limit.name for limit in limits}
        denied = next((name for name in reversed(REFUSAL_ORDER) if name in names), LimitName.REQUESTS_PER_MINUTE)
        return Decision(allowed=False, denied=denied, retry_after=1, used=used)

    def _adjust(self, cursor: Any, *, team_id: int, windows: _Windows, requests: int, tokens: int) -> None:
        params = {**self._window_params(windows), "team": team_id, "requests": requests, "tokens": tokens}
        cursor.execute(self._statement("adjust"), params)

    def _delete(self, cursor: Any, reservation_id: int) -> None:
        cursor.execute(self._statement("reservation_delete"), {"reservation": reservation_id})
        if cursor.fetchone() is None:
            raise _Held  # settled, refunded or swept before: roll this step back

    def settle(self, *, reservation: Reservation, event: UsageEvent) -> bool:
        windows = _windows(reservation.limits, reservation.reserved_at)
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                # The quota row first, as in every step (see the module docstring).
                self._adjust(
                    cursor, team_id=reservation.team_id, windows=windows, requests=0,
                    tokens=event.total_tokens - reservation.tokens,
                )  # fmt: skip
                self._delete(cursor, int(reservation.token))
                # The reservation held the id; a record can hold it only if it was bound past the
                # retention meanwhile: recorded without the id rather than not at all.
                if not usage_record_insert(event=event):
                    usage_record_insert(event=event, keyless=True)
                return True
        except _Held:
            return False
        except _UNAVAILABLE as error:  # rolled back: not recorded (a stream says so, usage/model_api.py)
            raise QuotaBackendUnavailable(f"database quota backend: {error}", may_have_run=False) from error

    def _give_back(self, *, team_id: int, windows: _Windows, tokens: int, reservation_id: int) -> bool:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                self._adjust(cursor, team_id=team_id, windows=windows, requests=-1, tokens=-tokens)
                self._delete(cursor, reservation_id)
                return True
        except _Held:
            return False
        except _UNAVAILABLE as error:
            raise QuotaBackendUnavailable(f"database quota backend: {error}") from error

    def refund(self, *, reservation: Reservation) -> None:
        self._give_back(
            team_id=reservation.team_id,
            windows=_windows(reservation.limits, reservation.reserved_at),
            tokens=reservation.tokens,
            reservation_id=int(reservation.token),
        )

    def sweep(self, *, now: datetime, batch_size: int = 1000) -> int:
        cutoff = now - timedelta(seconds=settings.TIERLAB_RESERVATION_TIMEOUT_SECONDS)
        swept = 0
        while True:
            stale = list(
                QuotaReservation.objects.filter(reserved_at__lt=cutoff)
                .order_by("reserved_at")
                .values_list("id", "team_id", "tokens", "minute_start", "day_start", "period_start")[:batch_size]
            )
            for reservation_id, team_id, tokens, minute, day, period in stale:
                swept += self._give_back(
                    team_id=team_id, windows=_Windows(minute=minute, day=day, period=period), tokens=tokens,
                    reservation_id=reservation_id,
                )  # fmt: skip
            if len(stale) < batch_size:
                return swept

    def used(self, *, team_id: int, limits: Sequence[Limit]) -> dict[LimitName, int]:
        # Absent limits' windows are not reported, so any ``now`` gives the same answer.
        params = {**self._window_params(_windows(limits, datetime.now(tz=UTC))), "team": team_id}
        with connection.cursor() as cursor:
            cursor.execute(self._statement("used"), params)
            row = cursor.fetchone()
        return self._used(limits, row or (0, 0, 0, 0))
