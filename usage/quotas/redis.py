"""The Redis quota backend: one Lua script per step, no SQL on the request path.

Counters are plain integer keys per team, limit and window (``tl:q:<team>:rpm:<window start epoch>``)
that expire a while after their window ends, so a new window simply finds no key. ``reserve`` is one
script (``lua/reserve.lua``, after Sentry's ``is_rate_limited.lua``) that reads every counter and the
client's request-id key, answers a recorded id (the same request again, or a different one: reused),
refuses if any counter has no room and otherwise increments them all. ``settle`` is one script that
corrects the token counters, appends the usage event to a stream and binds the request id to the
request's hash for ``TIERLAB_REQUEST_ID_RETENTION_SECONDS`` (a request answered in one call, ``consume``,
does all of it in the reserve script). ``drain_usage_stream`` (a Celery task's job) writes the stream's
events into ``UsageRecord`` in batches and acknowledges them only after the commit.

After the retention the key is gone and an id is admitted (and counted) like a new one; its event is
then dropped by the unique (team, request id) when drained, so it is counted in the quota but not
billed from the records. Server-generated ids have no key at all.

The monthly counter outlives the Redis state it started from only if Redis keeps it: when the script
finds it missing (a fresh or flushed Redis mid-period) it says so, and the counter is initialised once
from the database's usage (usage.selectors.tokens_used) with SET NX, then the script runs again. Redis
itself remembers that it was initialised, so there is no per-process cache to go stale and no SQL in
the steady state.

Deployment notes: one Redis (with replicas if wanted), not Cluster: the settle script touches a
team's counters and the shared stream. Use ``maxmemory-policy noeviction``: an evicted monthly
counter would be re-initialised from records that lag by the undrained stream. Redis errors are not
caught here: whether to fail open or closed is the caller's decision.

Per request: reserve 1 script call (2 and one SQL sum only for the first request of a period after
Redis lost the counter), settle 1, refund 1.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.db import IntegrityError, transaction

from usage.quotas.base import (
    Decision,
    Limit,
    LimitName,
    QuotaBackend,
    Reservation,
    UsageEvent,
)
from usage.selectors import tokens_used
from usage.services import usage_records_create

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
DRAIN_GROUP = "tl-usage-drain"


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


# The usage event travels as ONE stream field, "e": a JSON array in this order. Two values instead of
# sixteen per XADD (each value is packed by redis-py on the request path).
_EVENT_ORDER = (
    "request_id", "team_id", "api_key_id", "model", "prompt_tokens", "completion_tokens", "created_at", "partner_id",
    "request_hash",
)  # fmt: skip


def _event_fields(event: UsageEvent) -> list[str]:
    packed = [
        event.request_id,
        event.team_id,
        event.api_key_id,
        event.model,
        event.prompt_tokens,
        event.completion_tokens,
        event.created_at.isoformat(),
        event.partner_id,
        event.request_hash,
    ]
    return ["e", json.dumps(packed, separators=(",", ":"))]


def _event_parse(fields: dict[str, str]) -> UsageEvent:
    if "e" in fields:
        values = json.loads(fields["e"])
        if len(values) == len(_EVENT_ORDER) - 1:  # appended before request hashes were streamed
            values.append("")
        fields = {name: ("" if value is None else str(value)) for name, value in zip(_EVENT_ORDER, values, strict=True)}
    created_at = datetime.fromisoformat(fields["created_at"])
    if created_at.tzinfo is None:
        raise ValueError(f"created_at must be timezone-aware: {fields['created_at']!r}")
    return UsageEvent(
        request_id=fields["request_id"],
        team_id=int(fields["team_id"]),
        api_key_id=int(fields["api_key_id"]) if fields.get("api_key_id") else None,
        model=fields["model"],
        prompt_tokens=int(fields["prompt_tokens"]),
        completion_tokens=int(fields["completion_tokens"]),
        created_at=created_at,
        partner_id=int(fields["partner_id"]) if fields.get("partner_id") else None,
        request_hash=fields.get("request_hash", ""),
    )


class RedisQuotaBackend(QuotaBackend):
    """Quotas in Redis (see the module docstring). ``key_prefix`` namespaces every key and the stream
    (tests give each test its own)."""

    def __init__(self, *, url: str, key_prefix: str = "tl:") -> None:
        self.key_prefix = key_prefix
        self.stream = f"{key_prefix}usage-events"
        self.dead_letter_stream = f"{key_prefix}usage-events:dead"
        # RESP2: the stream commands' reply shapes below are RESP2's (redis-py 8 defaults to RESP3).
        self._url = url
        self.client = redis.Redis.from_url(url, decode_responses=True, protocol=2, socket_connect_timeout=2)
        self._reserve = self.client.register_script((_LUA / "reserve.lua").read_text())
        self._settle = self.client.register_script((_LUA / "settle.lua").read_text())
        self._refund = self.client.register_script((_LUA / "refund.lua").read_text())
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self._prepared: dict[int, _Prepared] = {}

    def _evalsha(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a registered script by its SHA on a pooled connection directly (the request path's call:
        it skips redis-py's Script wrapper, argument filters and retry machinery, about a third of the
        client's CPU per call); loads the script if Redis does not have it. A connection error falls
        back to the client's own command path, which reconnects and retries."""
        pool = self.client.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
            return connection.read_response()
        except redis.exceptions.NoScriptError:
            return script(keys=keys, args=args)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            connection.disconnect()
            return self.client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        finally:
            pool.release(connection)

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
        if len(self._prepared) >= 10_000:  # bounded: one entry per active team
            self._prepared.clear()
        self._prepared[team_id] = entry
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
        keys = [self._request_id_key(team_id, request_id), *prepared.counter_keys]
        charged = tokens if event is None else event.total_tokens
        rid_ttl = _request_id_ttl(request_id_is_new)
        args: list[int | str | float] = [
            rid_ttl, len(limits), now.timestamp(), tokens, charged, request_hash, *prepared.static_args,
        ]  # fmt: skip
        if event is not None:
            keys.append(self.stream)
            args += _event_fields(event)
        # Twice at most: the second run finds the monthly counter initialised.
        for _ in range(3):
            status, *counts = self._evalsha(self._reserve, keys, args)
            if status == "init":
                self._period_initialise(team_id=team_id, limit=limits[int(counts[0]) - 1], now=now)
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
                )
            if status == "duplicate":
                return Decision.repeated(used=used)
            if status == "reused":
                return Decision.id_reused(used=used)
            refused = Decision.refused(limits=limits, used=used, tokens=tokens, now=now)
            if refused is None:  # pragma: no cover - the script and refusal() disagree
                raise AssertionError(f"reserve.lua refused but no limit is full: {used}")
            return refused
        raise RuntimeError(f"monthly counter of team {team_id} vanished twice while initialising it")

    def settle(self, *, reservation: Reservation, event: UsageEvent) -> bool:
        # The script records the event and binds the request id, unless a request with the same id was
        # recorded while this one ran (see lua/settle.lua).
        limits = reservation.limits
        per_counter: list[int | str] = []
        for limit in limits:
            per_counter += ["r" if limit.name.unit == "requests" else "t", limit.cost(tokens=reservation.tokens)]
        recorded = self._settle(
            keys=[
                self.stream,
                self._request_id_key(reservation.team_id, reservation.request_id),
                *(self._counter_key(reservation.team_id, limit) for limit in limits),
            ],
            args=[
                _request_id_ttl(reservation.request_id_is_new),
                event.request_hash,
                event.total_tokens - reservation.tokens,
                len(limits),
                *per_counter,
                *_event_fields(event),
            ],
        )
        return bool(recorded)

    def refund(self, *, reservation: Reservation) -> None:
        limits = reservation.limits
        self._refund(
            keys=[self._counter_key(reservation.team_id, limit) for limit in limits],
            args=[limit.cost(tokens=reservation.tokens) for limit in limits],
        )

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

    # --- the usage stream -----------------------------------------------------------------------------
    def drain_usage_stream(self, *, batch_size: int = 1000, block_ms: int = 0, reclaim_idle_ms: int = 60_000) -> int:
        """Write the stream's usage events into ``UsageRecord``; returns how many rows were new.

        Reads with the consumer group ``DRAIN_GROUP`` and first reclaims entries another drainer read
        but did not acknowledge within ``reclaim_idle_ms`` (it crashed), so no batch is lost. Entries
        are acknowledged (and deleted) only after the transaction that stored them commits; a batch
        delivered twice adds nothing, thanks to the unique (team, request id). ``block_ms`` > 0 waits
        that long for the first entries; 0 returns at once. Stops when the stream is caught up.
        """
        self._group_ensure()
        written = 0
        block = block_ms or None
        while True:
            entries = self._entries_stale(count=batch_size, min_idle_ms=reclaim_idle_ms)
            if len(entries) < batch_size:
                entries += self._entries_new(count=batch_size - len(entries), block_ms=block)
            block = None
            if entries:
                written += self._entries_store(entries)
            if len(entries) < batch_size:
                return written

    def _group_ensure(self) -> None:
        try:
            # From the stream's start ("0"), so events appended before the first drain are not skipped.
            self.client.xgroup_create(self.stream, DRAIN_GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def _entries_stale(self, *, count: int, min_idle_ms: int) -> list[tuple[str, dict[str, str]]]:
        reply = self.client.xautoclaim(
            self.stream, DRAIN_GROUP, self.consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count
        )
        entries, deleted = reply[1], (reply[2] if len(reply) > 2 else [])
        # Entries deleted from the stream while pending (Redis 7 lists them apart, 6.2 with no fields)
        # have nothing left to store.
        gone = [*deleted, *(entry_id for entry_id, fields in entries if fields is None)]
        if gone:
            self.client.xack(self.stream, DRAIN_GROUP, *gone)
        return [(entry_id, fields) for entry_id, fields in entries if fields is not None]

    def _entries_new(self, *, count: int, block_ms: int | None) -> list[tuple[str, dict[str, str]]]:
        reply = self.client.xreadgroup(DRAIN_GROUP, self.consumer, {self.stream: ">"}, count=count, block=block_ms)
        return [entry for _stream, entries in reply or [] for entry in entries]

    def _ack(self, entry_ids: Sequence[str]) -> None:
        if not entry_ids:
            return
        with self.client.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, DRAIN_GROUP, *entry_ids)
            pipe.xdel(self.stream, *entry_ids)
            pipe.execute()

    def _dead_letter(self, entry_id: str, fields: dict[str, str], reason: str) -> None:
        logger.error("usage event %s cannot be stored (%s): moved to %s", entry_id, reason, self.dead_letter_stream)
        self.client.xadd(self.dead_letter_stream, {**fields, "entry_id": entry_id, "reason": reason[:500]})
        self._ack([entry_id])

    def _entries_store(self, entries: Sequence[tuple[str, dict[str, Any]]]) -> int:
        parsed: list[tuple[str, dict[str, Any], UsageEvent]] = []
        for entry_id, fields in entries:
            try:
                parsed.append((entry_id, fields, _event_parse(fields)))
            except (KeyError, ValueError) as error:
                self._dead_letter(entry_id, fields, f"unreadable: {error!r}")
        if not parsed:
            return 0
        ids = [entry_id for entry_id, _, _ in parsed]
        try:
            with transaction.atomic():
                written = usage_records_create(events=[event for _, _, event in parsed])
                transaction.on_commit(partial(self._ack, ids))
            return written
        except IntegrityError:
            # One bad event (e.g. its team was deleted) must not block the rest forever: store one by
            # one and set aside the events the database refuses.
            written = 0
            for entry_id, fields, event in parsed:
                try:
                    with transaction.atomic():
                        new = usage_records_create(events=[event])
                        transaction.on_commit(partial(self._ack, [entry_id]))
                except IntegrityError as error:  # raised at commit: SQLite and PostgreSQL defer FK checks
                    self._dead_letter(entry_id, fields, f"refused by the database: {error}")
                else:
                    written += new
            return written


def drain_usage_stream(*, batch_size: int = 1000, block_ms: int = 0) -> int:
    """Drain the configured Redis backend's usage stream (see ``RedisQuotaBackend.drain_usage_stream``);
    0 when the configured backend is not Redis (nothing is streamed then)."""
    from usage.quotas import get_quota_backend

    backend = get_quota_backend()
    if not isinstance(backend, RedisQuotaBackend):
        return 0
    return backend.drain_usage_stream(batch_size=batch_size, block_ms=block_ms)
