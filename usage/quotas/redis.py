"""The Redis quota backend: one Lua script per step, no SQL on the request path.

Counters are plain integer keys per team, limit and window (``tl:q:<team>:rpm:<window start epoch>``)
that expire a while after their window ends, so a new window simply finds no key. ``reserve`` is one
script (``lua/reserve.lua``, after Sentry's ``is_rate_limited.lua``) that reads every counter and the
client's request-id key, answers a held id (pending or recorded: the same request, or a different
one), refuses if any counter has no room and otherwise increments them all. In the same call it holds
the request id pending and adds the reservation to a sorted set (``tl:reservations``, scored by the
request's time) carrying its request id and counters. ``settle`` is one script that takes the
reservation out of that set, corrects the token counters, appends the usage event to a stream and binds
the request id to the request's hash for ``TIERLAB_REQUEST_ID_RETENTION_SECONDS``; ``refund`` takes it
out and gives its counts back; ``sweep`` (a periodic task) refunds every reservation older than
``TIERLAB_RESERVATION_TIMEOUT_SECONDS`` (its process crashed or lost its connection) and frees its id.
Taking the reservation out of the set is what makes each of these happen once. A request answered in
one call (``consume``) does all of it in the reserve script and leaves no reservation.
``drain_usage_stream`` (a Celery task's job) writes the stream's events into ``UsageRecord`` in batches
and acknowledges them only after the commit.

Timeouts and unanswered calls (issue 12). Every call has a connect timeout and a read timeout
(``TIERLAB_REDIS_CONNECT_TIMEOUT_SECONDS``, ``TIERLAB_REDIS_READ_TIMEOUT_SECONDS``) and none is
retried by the client: past them the call raises ``QuotaBackendUnavailable`` (the model API's 503).
A script that may or may not have run is never sent again: only a ``NOSCRIPT`` answer (it did not
run) sends it again, with the script. A reserve or consume that reached a stalled Redis would still
run when Redis wakes, after its caller answered 503; so it carries a deadline by Redis's own clock,
half the read timeout after it was sent, and a script that starts later changes nothing ("late").
The caller knows Redis's clock from the last fast reply (every script answers with ``TIME``), so no
clock is compared across machines and time-travelling tests do not matter. What is left: a script
Redis ran before the deadline whose answer it did not send before the caller gave up (Redis stopped
between the two) is counted although the caller answered 503. A reserve of that kind is a reservation
nobody settles: the sweeper refunds it. A consume of that kind is recorded: a retry with the same
``X-Request-Id`` is answered from the record (counted once); a request without one stays counted.

Request ids held by an earlier version as ``"1"`` (recorded, 48 h TTL, no hash) are resolved against
the usage record (one SQL read, only for such keys): a record within the retention with a request hash
binds the key to that hash (the same request is a duplicate, another reused); otherwise (no record, a
record older than the retention, or one written before records kept hashes) the id is free and the
request is counted as a new one, never refused as reused. A reuse after the retention is a new request
whose event takes the id over when drained (usage.services.usage_records_create), so it is counted and
recorded once.

The monthly counter outlives the Redis state it started from only if Redis keeps it: when the script
finds it missing (a fresh or flushed Redis mid-period) it says so, and the counter is initialised once
from the database's usage (usage.selectors.tokens_used) with SET NX, then the script runs again. Redis
itself remembers that it was initialised, so there is no per-process cache to go stale and no SQL in
the steady state.

Deployment notes: one Redis (with replicas if wanted), not Cluster: the scripts touch a team's
counters, the shared reservation set and the shared stream. Use ``maxmemory-policy noeviction``: an
evicted monthly counter would be re-initialised from records that lag by the undrained stream.

Per request: consume 1 script call; reserve 1 (2 and one SQL sum only for the first request of a
period after Redis lost the counter), settle 1, refund 1. Once per process: one ``TIME``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.utils import timezone
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.local_cache import DEFAULT_MAX_ENTRIES
from usage.models import UnansweredScript
from usage.quotas.base import (
    Decision,
    Limit,
    LimitName,
    QuotaBackend,
    QuotaBackendUnavailable,
    Reservation,
    UsageEvent,
)
from usage.quotas.redis_stream import DRAIN_GROUP, UsageStreamDrain, drain_usage_stream, event_fields, event_parse
from usage.selectors import tokens_used, usage_record_holding
from usage.unanswered import unanswered_note, unanswered_reconcile, unanswered_settle_reservations

__all__ = ["DRAIN_GROUP", "RedisQuotaBackend", "drain_usage_stream"]

logger = logging.getLogger(__name__)

_LUA = Path(__file__).resolve().parent / "lua"
_LIMIT_CODE = {
    LimitName.REQUESTS_PER_MINUTE: "rpm",
    LimitName.TOKENS_PER_MINUTE: "tpm",
    LimitName.REQUESTS_PER_DAY: "rpd",
    LimitName.MONTHLY_TOKENS: "mtok",
}
# How long a counter outlives its window: a request admitted just before the edge can still be
# settled or refunded, and a billing period that has ended but is not closed yet keeps counting.
_MAX_GRACE = timedelta(days=1)
# What a call that Redis did not answer raises, as QuotaBackendUnavailable.
_NO_ANSWER = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
# An id recorded by an earlier version (no hash): bind it to the record's hash, or free it ('').
_LEGACY_RESOLVE = """
if redis.call('GET', KEYS[1]) ~= '1' then return 0 end
if ARGV[1] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL') end
return 1
"""


# Give back what an unanswered consume counted (usage/unanswered.py), once: KEYS[1] is the guard.
_CONSUME_UNDO = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for i = 2, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 1 and redis.call('DECRBY', KEYS[i], ARGV[i]) < 0 then
        redis.call('SET', KEYS[i], 0, 'KEEPTTL')
    end
end
return 1
"""
# How long the undo's guard lives: longer than an unanswered consume row stays open.
_UNDO_GUARD_SECONDS = 3 * 24 * 3600


@contextlib.contextmanager
def _answered(what: str, *, may_have_run: bool = True) -> Iterator[None]:
    try:
        yield
    except _NO_ANSWER as error:
        raise QuotaBackendUnavailable(f"Redis did not answer {what}: {error}", may_have_run=may_have_run) from error


@dataclass(frozen=True)
class _Prepared:
    limits: Sequence[Limit]
    counter_keys: list[str]
    static_args: list[int | str]


def _request_id_ttl(request_id_is_new: bool) -> int:
    """The request-id key's TTL for the scripts: 0 (no check, no key) for a server-generated id."""
    return 0 if request_id_is_new else settings.TIERLAB_REQUEST_ID_RETENTION_SECONDS


def _ttl(limit: Limit, now: datetime) -> int:
    """Seconds a counter of ``limit`` should live from ``now``: relative to the request's clock, not
    Redis's, so explicit (simulated, test) times behave as real ones."""
    grace = min(limit.window_end - limit.window_start, _MAX_GRACE)
    return max(1, math.ceil((max(limit.window_end, now) - now + grace).total_seconds()))


class RedisQuotaBackend(UsageStreamDrain, QuotaBackend):
    """Quotas in Redis (see the module docstring). ``key_prefix`` namespaces every key and the stream
    (tests give each test its own)."""

    def __init__(
        self,
        *,
        url: str,
        key_prefix: str = "tl:",
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> None:
        self.key_prefix = key_prefix
        self.stream = f"{key_prefix}usage-events"
        self.dead_letter_stream = f"{key_prefix}usage-events:dead"
        self.reservations = f"{key_prefix}reservations"
        if connect_timeout is None:
            connect_timeout = settings.TIERLAB_REDIS_CONNECT_TIMEOUT_SECONDS
        self.read_timeout = settings.TIERLAB_REDIS_READ_TIMEOUT_SECONDS if read_timeout is None else read_timeout
        # RESP2: the stream commands' reply shapes below are RESP2's (redis-py 8 defaults to RESP3).
        # No retries (redis-py 8 retries 3 times by default, timeouts included): a script must never be
        # sent twice, and a request must not wait four timeouts to learn that Redis is away.
        self._url = url
        self.client = redis.Redis.from_url(
            url,
            decode_responses=True,
            protocol=2,
            socket_connect_timeout=connect_timeout,
            socket_timeout=self.read_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._reserve = self.client.register_script((_LUA / "reserve.lua").read_text())
        self._settle = self.client.register_script((_LUA / "settle.lua").read_text())
        self._refund = self.client.register_script((_LUA / "refund.lua").read_text())
        self._legacy_resolve = self.client.register_script(_LEGACY_RESOLVE)
        self._consume_undo = self.client.register_script(_CONSUME_UNDO)
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self._prepared: dict[int, _Prepared] = {}
        # Redis's clock minus time.monotonic(), from the last fast reply: what the deadlines are built on.
        self._clock_offset: float | None = None

    def _evalsha(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a registered script by its SHA on a pooled connection directly (the request path's call:
        it skips redis-py's Script wrapper, argument filters and retry machinery, about a third of the
        client's CPU per call). Sent once: only a NOSCRIPT answer (the script did not run) loads it and
        sends it again. A connection or timeout error raises QuotaBackendUnavailable: the script may have
        run or may still run (a stalled Redis runs what it received when it wakes), so it is not sent
        again; the connection is dropped, so a late answer cannot be read as another call's."""
        pool = self.client.connection_pool
        with _answered("a connection", may_have_run=False):  # nothing was sent yet
            connection = pool.get_connection()
        try:
            with _answered("in time"):
                try:
                    connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
                    return connection.read_response()
                except redis.exceptions.NoScriptError:
                    connection.send_command("SCRIPT", "LOAD", script.script)
                    connection.read_response()
                    connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
                    return connection.read_response()
        except QuotaBackendUnavailable:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)

    # --- Redis's clock: the deadline of reserve and consume ----------------------------------------------
    def _deadline(self) -> tuple[float, float]:
        """(when the call is sent, by time.monotonic(); the deadline by Redis's clock): half the read
        timeout after sending, so a script that starts before it answers before the caller gives up."""
        if self._clock_offset is None:
            sent = time.monotonic()
            with _answered("TIME"):
                seconds, microseconds = self.client.time()
            self._clock_observe(f"{seconds}.{microseconds:06d}", sent=sent, received=time.monotonic())
        sent = time.monotonic()
        offset = self._clock_offset if self._clock_offset is not None else 0.0
        return sent, sent + offset + self.read_timeout / 2

    def _clock_observe(self, clock: str, *, sent: float, received: float) -> None:
        # A reply's TIME was read while the call was in flight: taken as read at its arrival, the offset
        # errs low by at most the round trip (deadlines come out early, never late). Only fast replies
        # count; the first one counts anyway (a deadline needs some offset).
        if received - sent <= self.read_timeout / 20 or self._clock_offset is None:
            self._clock_offset = float(clock) - received

    def close(self) -> None:
        self.client.close()

    # --- keys ---------------------------------------------------------------------------------------
    def _counter_key(self, team_id: int, limit: Limit) -> str:
        return f"{self.key_prefix}q:{team_id}:{_LIMIT_CODE[limit.name]}:{int(limit.window_start.timestamp())}"

    def _request_id_key(self, team_id: int, request_id: str) -> str:
        return f"{self.key_prefix}q:{team_id}:rid:{request_id}"

    def _period_initialise(self, *, team_id: int, limit: Limit, now: datetime) -> None:
        # NX: if another process initialised it (and requests counted on) meanwhile, keep theirs.
        tokens = tokens_used(team_id=team_id, start=limit.window_start, end=limit.window_end)
        with _answered("the monthly counter"):
            self.client.set(self._counter_key(team_id, limit), tokens, nx=True, ex=_ttl(limit, now))

    # --- the contract -------------------------------------------------------------------------------
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
        return self._check_and_consume(
            team_id=team_id,
            request_id=request_id,
            limits=limits,
            tokens=tokens,
            now=now,
            request_id_is_new=request_id_is_new,
            request_hash=request_hash,
        )

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
        # One script call: checked with the reserved ``tokens``, consumed and streamed at the actual ones.
        return self._check_and_consume(
            team_id=team_id,
            request_id=request_id,
            limits=limits,
            tokens=tokens,
            now=now,
            event=event,
            request_id_is_new=request_id_is_new,
            request_hash=event.request_hash,
        )

    def _prepared_for(self, team_id: int, limits: Sequence[Limit]) -> _Prepared:
        """The counter keys and per-counter script arguments of ``limits``. The request path passes the
        same limits object for every request of a team within a minute (usage/metering.py caches it),
        so these are built once per team and minute, not per request."""
        entry = self._prepared.get(team_id)
        if entry is not None and entry.limits is limits:
            return entry
        counter_keys = []
        static_args: list[int | str] = []
        for limit in limits:
            counter_keys.append(self._counter_key(team_id, limit))
            static_args += [
                "r" if limit.name.unit == "requests" else "t",
                limit.effective_capacity,
                int(limit.window_end.timestamp()),
                int(min(limit.window_end - limit.window_start, _MAX_GRACE).total_seconds()),
                1 if limit.name is LimitName.MONTHLY_TOKENS else 0,
            ]
        entry = _Prepared(limits=limits, counter_keys=counter_keys, static_args=static_args)
        prepared = self._prepared
        prepared.pop(team_id, None)  # to the end: the dict stays oldest first
        while len(prepared) >= DEFAULT_MAX_ENTRIES:  # bounded: one entry per active team, oldest out
            with contextlib.suppress(KeyError, StopIteration, RuntimeError):  # another thread got there first
                del prepared[next(iter(prepared))]
        prepared[team_id] = entry
        return entry

    def _check_and_consume(
        self,
        *,
        team_id: int,
        request_id: str,
        limits: Sequence[Limit],
        tokens: int,
        now: datetime,
        event: UsageEvent | None = None,
        request_id_is_new: bool = False,
        request_hash: str = "",
    ) -> Decision:
        prepared = self._prepared_for(team_id, limits)
        charged = tokens if event is None else event.total_tokens
        rid_ttl = _request_id_ttl(request_id_is_new)
        member = pending = ""
        if event is None:  # reserve: the reservation the sweeper can give back, and the id's pending value
            token = uuid.uuid4().hex
            pending = f"p:{token}:{request_hash}" if rid_ttl else ""
            member = json.dumps(
                [token, team_id, request_id, request_hash, 1 if rid_ttl else 0, tokens,
                 [[key, limit.name.unit[0]] for key, limit in zip(prepared.counter_keys, limits, strict=True)]],
                separators=(",", ":"),
            )  # fmt: skip
        keys = [
            self._request_id_key(team_id, request_id),
            *prepared.counter_keys,
            self.stream if event is not None else self.reservations,
        ]
        tail = [*prepared.static_args, *(event_fields(event) if event is not None else ())]
        late = False
        # A few runs at most: after "init" (the monthly counter initialised), "legacy" (the id resolved)
        # or one "late" (nothing was done: sent again with a new deadline).
        for _ in range(4):
            sent, deadline = self._deadline()
            args = [
                rid_ttl, len(limits), now.timestamp(), tokens, charged, request_hash, f"{deadline:.6f}", member,
                pending, *tail,
            ]  # fmt: skip
            try:
                status, clock, *counts = self._evalsha(self._reserve, keys, args)
            except QuotaBackendUnavailable as error:
                if event is not None and not rid_ttl and error.may_have_run:
                    self._consume_unanswered(prepared=prepared, limits=limits, event=event)
                raise
            self._clock_observe(clock, sent=sent, received=time.monotonic())
            if status == "late":
                if late:
                    raise QuotaBackendUnavailable("Redis ran the quota script after its deadline twice")
                late = True
                continue
            if status == "init":
                self._period_initialise(team_id=team_id, limit=limits[int(counts[0]) - 1], now=now)
                continue
            if status == "legacy":
                self._legacy_resolve_id(team_id=team_id, request_id=request_id, now=now)
                continue
            used = {limit.name: int(count) for limit, count in zip(limits, counts, strict=True)}
            if status == "ok" and event is not None:  # consumed and recorded: nothing left to settle
                return Decision(allowed=True, used=used)
            if status == "ok":
                return Decision.reserved(
                    team_id=team_id,
                    request_id=request_id,
                    tokens=tokens,
                    limits=limits,
                    now=now,
                    used=used,
                    request_hash=request_hash,
                    request_id_is_new=request_id_is_new,
                    token=member,
                )
            if status == "duplicate":
                return Decision.repeated(used=used)
            if status == "reused":
                return Decision.id_reused(used=used)
            if status == "pending":
                return Decision.pending(used=used)
            refused = Decision.refused(limits=limits, used=used, tokens=tokens, now=now)
            if refused is None:  # pragma: no cover - the script and refusal() disagree
                raise AssertionError(f"reserve.lua refused but no limit is full: {used}")
            return refused
        raise RuntimeError(f"the quota script of team {team_id} did not settle on an answer in 4 runs")

    def _legacy_resolve_id(self, *, team_id: int, request_id: str, now: datetime) -> None:
        """Bind an id an earlier version recorded as "1" to its record's hash, or free it (see the module
        docstring). One SQL read, for such ids only."""
        held = usage_record_holding(team_id=team_id, request_id=request_id)
        retained_since = now - timedelta(seconds=settings.TIERLAB_REQUEST_ID_RETENTION_SECONDS)
        bound = held.request_hash if held is not None and held.created_at >= retained_since else ""
        with _answered("the legacy request id"):
            self._legacy_resolve(keys=[self._request_id_key(team_id, request_id)], args=[bound])

    def settle(self, *, reservation: Reservation, event: UsageEvent) -> bool:
        try:
            return self._settle_send(member=reservation.token, reserved=reservation.tokens, event=event)
        except QuotaBackendUnavailable as error:
            if error.may_have_run:  # the stream was answered: send it again later (usage/unanswered.py)
                payload = {"reservation": reservation.token, "reserved": reservation.tokens}
                unanswered_note(
                    kind=UnansweredScript.Kind.SETTLE,
                    team_id=event.team_id,
                    request_id=event.request_id,
                    payload={**payload, "event": event_fields(event)[1]},
                    now=timezone.now(),
                )
            raise

    def settle_again(self, payload: dict[str, Any]) -> bool:
        """Send an unanswered settle again (``UnansweredScript`` of kind settle); it runs once."""
        event = event_parse({"e": payload["event"]})
        return self._settle_send(member=payload["reservation"], reserved=payload["reserved"], event=event)

    def _settle_send(self, *, member: str, reserved: int, event: UsageEvent) -> bool:
        # The script records the event and binds the request id, unless the reservation is gone (see
        # lua/settle.lua). The reservation carries its counters: the ones it incremented.
        _token, team_id, request_id, _hash, _held, _tokens, counters = json.loads(member)
        keys = [
            self.stream,
            self.reservations,
            self._request_id_key(team_id, request_id),
            *(key for key, _unit in counters),
        ]
        args = [
            member,
            self._pending_value(member),
            settings.TIERLAB_REQUEST_ID_RETENTION_SECONDS,
            event.request_hash,
            event.total_tokens - reserved,
            len(counters),
            *(unit for _key, unit in counters),
            *event_fields(event),
        ]
        return bool(self._evalsha(self._settle, keys, args))

    # --- unanswered consumes (usage/unanswered.py) ---------------------------------------------------
    def _consume_unanswered(self, *, prepared: _Prepared, limits: Sequence[Limit], event: UsageEvent) -> None:
        charged = [
            [key, 1 if limit.name.unit == "requests" else event.total_tokens]
            for key, limit in zip(prepared.counter_keys, limits, strict=True)
        ]
        unanswered_note(
            kind=UnansweredScript.Kind.CONSUME,
            team_id=event.team_id,
            request_id=event.request_id,
            payload={"counters": charged},
            now=timezone.now(),
        )

    def unanswered_consume_undo(self, row: UnansweredScript) -> bool:
        """Give back what the unanswered consume of ``row`` counted, once (a guard key per request)."""
        counters = row.payload["counters"]
        keys = [f"{self.key_prefix}q:{row.team_id}:undo:{row.request_id}", *(key for key, _amount in counters)]
        with _answered("the undo"):
            return bool(
                self._consume_undo(keys=keys, args=[_UNDO_GUARD_SECONDS, *(amount for _key, amount in counters)])
            )

    @staticmethod
    def _pending_value(member: str) -> str:
        token, _team, _request_id, request_hash, held, _tokens, _counters = json.loads(member)
        return f"p:{token}:{request_hash}" if held else ""

    def _give_back(self, member: str) -> bool:
        """Refund the reservation ``member`` (of the reservations set) and free its id, once."""
        _token, team_id, request_id, _hash, _held, tokens, counters = json.loads(member)
        keys = [self.reservations, self._request_id_key(team_id, request_id), *(key for key, _unit in counters)]
        args = [member, self._pending_value(member), *(1 if unit == "r" else tokens for _key, unit in counters)]
        return bool(self._evalsha(self._refund, keys, args))

    def refund(self, *, reservation: Reservation) -> None:
        self._give_back(reservation.token)

    def sweep(self, *, now: datetime, batch_size: int = 1000) -> int:
        # First what unanswered scripts did (usage/unanswered.py): settles sent again, so their
        # reservations are settled rather than refunded; those still unanswered are kept.
        unanswered_reconcile(backend=self, now=now)
        keep = unanswered_settle_reservations()
        cutoff = (now - timedelta(seconds=settings.TIERLAB_RESERVATION_TIMEOUT_SECONDS)).timestamp()
        swept = kept = 0
        while True:
            with _answered("the sweep"):
                members = self.client.zrangebyscore(self.reservations, "-inf", f"({cutoff}", start=kept, num=batch_size)
            for member in members:
                if member in keep:
                    kept += 1
                    continue
                try:
                    given_back = self._give_back(member)
                except (ValueError, TypeError):
                    logger.exception("unreadable reservation %r: removed", member[:200])
                    self.client.zrem(self.reservations, member)
                    continue
                if given_back:
                    logger.warning("reservation never settled, refunded: %s", member[:200])
                swept += given_back
            if len(members) < batch_size:
                return swept

    def used(self, *, team_id: int, limits: Sequence[Limit]) -> dict[LimitName, int]:
        if not limits:
            return {}
        keys = [self._counter_key(team_id, limit) for limit in limits]
        values = self.client.mget(keys)
        for index, limit in enumerate(limits):
            if values[index] is None and limit.name is LimitName.MONTHLY_TOKENS:
                self._period_initialise(team_id=team_id, limit=limit, now=limit.window_start)
                values[index] = self.client.get(keys[index])
        return {limit.name: int(value or 0) for limit, value in zip(limits, values, strict=True)}
