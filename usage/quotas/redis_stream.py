"""The Redis backend's usage stream (usage/quotas/redis.py): how a usage event travels in it, and the
drain that writes its events into ``UsageRecord`` rows (a Celery task's job).

Events are appended by the quota scripts (consume, settle) to ``<prefix>usage-events``. The drain reads
them with a consumer group, stores them in batches (usage.services.usage_records_create: each exactly
once) and acknowledges them only after the commit; events the database refuses go to
``<prefix>usage-events:dead``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Any

import redis
from django.db import IntegrityError, transaction
from django.utils import timezone

from usage.models import UnansweredScript
from usage.quotas.base import UsageEvent
from usage.services import usage_records_create
from usage.unanswered import unanswered_consumes, unanswered_resolve

logger = logging.getLogger(__name__)

DRAIN_GROUP = "tl-usage-drain"


# The usage event travels as ONE stream field, "e": a JSON array in this order. Two values instead of
# sixteen per XADD (each value is packed by redis-py on the request path).
_EVENT_ORDER = (
    "request_id", "team_id", "api_key_id", "model", "prompt_tokens", "completion_tokens", "created_at", "partner_id",
    "request_hash",
)  # fmt: skip


def event_fields(event: UsageEvent) -> list[str]:
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


def event_parse(fields: dict[str, str]) -> UsageEvent:
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


class UsageStreamDrain:
    """The drain half of ``RedisQuotaBackend`` (its ``client``, ``stream``, ``dead_letter_stream`` and
    ``consumer``)."""

    client: redis.Redis
    stream: str
    dead_letter_stream: str
    consumer: str
    unanswered_consume_undo: Callable[[UnansweredScript], bool]

    def drain_usage_stream(self, *, batch_size: int = 1000, block_ms: int = 0, reclaim_idle_ms: int = 60_000) -> int:
        """Write the stream's usage events into ``UsageRecord``; returns how many rows were new.

        Reads with the consumer group ``DRAIN_GROUP`` and first reclaims entries another drainer read
        but did not acknowledge within ``reclaim_idle_ms`` (it crashed), so no batch is lost. Entries
        are acknowledged (and deleted) only after the transaction that stored them commits; a batch
        delivered twice adds nothing (usage_records_create knows its events). ``block_ms`` > 0 waits
        that long for the first entries (keep it under the client's read timeout); 0 returns at once.
        Stops when the stream is caught up.
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
                parsed.append((entry_id, fields, event_parse(fields)))
            except (KeyError, ValueError) as error:
                self._dead_letter(entry_id, fields, f"unreadable: {error!r}")
        if not parsed:
            return 0
        # Events of requests answered 503 whose consume script ran anyway (usage/unanswered.py): not
        # stored; their counts given back first (once), their rows resolved with the batch.
        unanswered = unanswered_consumes(keys=[(event.team_id, event.request_id) for _, _, event in parsed])
        voided = []
        if unanswered:
            for entry_id, _fields, event in parsed:
                row = unanswered.get((event.team_id, event.request_id))
                if row is None:
                    continue
                if row.resolved_at is None:
                    self.unanswered_consume_undo(row)
                    logger.warning("request %s was answered 503 but its script ran: not recorded", event.request_id)
                voided.append(entry_id)
            parsed = [item for item in parsed if (item[2].team_id, item[2].request_id) not in unanswered]
            with transaction.atomic():
                unanswered_resolve(row_ids=[row.id for row in unanswered.values()], now=timezone.now())
                transaction.on_commit(partial(self._ack, voided))
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
    from usage.quotas.redis import RedisQuotaBackend

    backend = get_quota_backend()
    if not isinstance(backend, RedisQuotaBackend):
        return 0
    return backend.drain_usage_stream(batch_size=batch_size, block_ms=block_ms)
