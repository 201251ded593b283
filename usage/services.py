"""Every write to usage data goes through here."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

from accounts import services as account_services
from core.sql import execute, insert_rows, param, quoted_table
from usage.models import UsageRecord
from usage.quotas.base import UsageEvent


def usage_records_create(*, events: Sequence[UsageEvent]) -> int:
    """Store admitted-request events as ``UsageRecord`` rows, each exactly once.

    Safe to call again with events already stored (a re-delivered stream batch, a client retry with
    the same request id): the unique (team, request id) constraint makes repeats no-ops. Returns how
    many rows were new. Must run inside the caller's transaction when the caller needs the records
    and its own writes to commit together.
    """
    if not events:
        return 0
    if len(events) == 1:
        return _usage_record_insert_one(events[0])
    # One statement for the batch, exact under concurrency like the single insert: the rows travel as
    # one JSON parameter (core.sql.rows_cte), and RETURNING gives exactly those this call inserted.
    # (The ORM's bulk_create needed a COUNT before and after, and on SQLite cut the batch into INSERTs
    # of 99 rows for its parameter limit: the simulator writes a record per team and day.)
    created = insert_rows(
        UsageRecord,
        _RECORD_FIELDS,
        [
            (
                e.request_id,
                e.team_id,
                e.api_key_id,
                e.model,
                e.prompt_tokens,
                e.completion_tokens,
                e.total_tokens,
                e.partner_id,
                e.created_at,
                e.request_hash,
            )
            for e in events
        ],
        suffix="ON CONFLICT (team_id, request_id) DO NOTHING RETURNING 1",
    )
    _api_keys_mark_used(events)
    return len(created)


_RECORD_FIELDS = (
    "request_id",
    "team",
    "api_key",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "partner_id",
    "created_at",
    "request_hash",
)


def _usage_record_insert_one(event: UsageEvent) -> int:
    """The request path's insert: one statement, exact under concurrency (INSERT ... ON CONFLICT DO
    NOTHING RETURNING: see core.sql for the database versions), instead of the ORM's
    count-insert-count."""
    created = execute(
        f"INSERT INTO {quoted_table(UsageRecord)} (request_id, team_id, api_key_id, model,"  # noqa: S608 - identifiers from _meta, values as parameters
        " prompt_tokens, completion_tokens, total_tokens, partner_id, created_at, request_hash)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (team_id, request_id) DO NOTHING RETURNING id",
        [
            event.request_id,
            event.team_id,
            event.api_key_id,
            event.model,
            event.prompt_tokens,
            event.completion_tokens,
            event.total_tokens,
            event.partner_id,
            param(event.created_at),
            event.request_hash,
        ],
    )
    if created:
        _api_keys_mark_used([event])
    return int(bool(created))


# Each process moves a key's last-used time at most once a minute, so the database backend does not
# add an UPDATE to every request; the time shown is at most that stale.
_KEY_MARK_INTERVAL_SECONDS = 60.0
_key_marked_at: dict[int, float] = {}


def _api_keys_mark_used(events: Sequence[UsageEvent]) -> None:
    now = time.monotonic()
    due: dict[int, datetime] = {}
    for event in events:
        if event.api_key_id is None:
            continue
        if now - _key_marked_at.get(event.api_key_id, float("-inf")) < _KEY_MARK_INTERVAL_SECONDS:
            continue
        if event.api_key_id not in due or due[event.api_key_id] < event.created_at:
            due[event.api_key_id] = event.created_at
    if due:
        account_services.api_key_mark_used(used_at=due)
        for key_id in due:
            _key_marked_at[key_id] = now
