"""Every write to usage data goes through here."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings

from accounts import services as account_services
from core.local_cache import DEFAULT_MAX_ENTRIES
from core.sql import execute, insert_rows, param, quoted_table
from usage.models import QuotaReservation, UsageRecord
from usage.quotas.base import UsageEvent


def usage_records_create(*, events: Sequence[UsageEvent]) -> int:
    """Store admitted-request events as ``UsageRecord`` rows, each exactly once (the Redis backend's
    stream drain; tests). Returns how many rows were new.

    Safe to call again with events already stored (a re-delivered stream batch): an event is the one
    already stored when its team, request id and time match a record holding that id, and adds
    nothing. An event whose request id is held by a different, earlier record (the id was used again
    after the retention, or Redis lost the binding) takes the id over: the earlier record stays, without
    it. So every event the quota backend counted gets its row, and counters stay equal to records. Must
    run inside the caller's transaction when the caller needs the records and its own writes to commit
    together.
    """
    if not events:
        return 0
    # One holder per (team, id) within the batch: the latest; earlier distinct events are stored keyless.
    latest: dict[tuple[int, str], UsageEvent] = {}
    for event in sorted(events, key=lambda e: e.created_at):
        latest[(event.team_id, event.request_id)] = event
    stored = _records_holding(latest)
    rows = []
    released = []
    for event in events:
        key = (event.team_id, event.request_id)
        holder = stored.get(key)
        if latest[key] is not event:
            if latest[key].created_at != event.created_at:
                rows.append(_record_row(event, request_key=None))
            continue
        if holder is not None and holder[1] == event.created_at:
            continue  # stored before: a re-delivery
        if holder is not None:
            released.append(holder[0])
        rows.append(_record_row(event, request_key=event.request_id))
    keyless = [row for row in rows if row.request_key is None]
    if keyless:  # stored keyless by an earlier delivery of this batch?
        stored_keyless = set(
            UsageRecord.objects.filter(
                team_id__in={row.team_id for row in keyless},
                request_id__in={row.request_id for row in keyless},
                request_key__isnull=True,
            ).values_list("team_id", "request_id", "created_at")
        )
        rows = [row for row in rows if (row.team_id, row.request_id, row.created_at) not in stored_keyless]
    if released:
        UsageRecord.objects.filter(id__in=released).update(request_key=None)
    if not rows:
        return 0
    # A drainer racing this one over the same entries inserts the same rows: the unique key keeps one.
    UsageRecord.objects.bulk_create(rows, ignore_conflicts=True)
    _api_keys_mark_used(events)
    keyed = {(row.team_id, row.request_key): row.created_at for row in rows if row.request_key is not None}
    mine = sum(1 for key, (_, created_at) in _records_holding(keyed).items() if keyed[key] == created_at)
    return mine + sum(1 for row in rows if row.request_key is None)


def _records_holding(keys: dict[tuple[int, str], Any]) -> dict[tuple[int, str], tuple[int, datetime]]:
    """(id, created_at) of the record holding each (team, request id) of ``keys``, if any."""
    found = UsageRecord.objects.filter(
        team_id__in={team_id for team_id, _ in keys}, request_key__in={request_id for _, request_id in keys}
    ).values_list("team_id", "request_key", "id", "created_at")
    return {(team_id, key): (id_, created_at) for team_id, key, id_, created_at in found if (team_id, key) in keys}


def _record_row(event: UsageEvent, *, request_key: str | None) -> UsageRecord:
    return UsageRecord(
        request_id=event.request_id,
        request_key=request_key,
        team_id=event.team_id,
        api_key_id=event.api_key_id,
        model=event.model,
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        total_tokens=event.total_tokens,
        partner_id=event.partner_id,
        created_at=event.created_at,
        request_hash=event.request_hash,
    )


# The columns of a usage record's INSERT (usage_record_insert and the database quota backend's one-statement
# charge on PostgreSQL, usage/quotas/database_pg.py), in the order of usage_record_values.
USAGE_RECORD_COLUMNS = (
    "request_id, request_key, team_id, api_key_id, model, prompt_tokens, completion_tokens, total_tokens,"
    " partner_id, created_at, request_hash"
)


def usage_record_values(*, event: UsageEvent, keyless: bool = False) -> list[Any]:
    """The values of USAGE_RECORD_COLUMNS for ``event`` (``keyless``: without holding the request id)."""
    return [
        event.request_id,
        None if keyless else event.request_id,
        event.team_id,
        event.api_key_id,
        event.model,
        event.prompt_tokens,
        event.completion_tokens,
        event.total_tokens,
        event.partner_id,
        param(event.created_at),
        event.request_hash,
    ]


def usage_records_inserted(*, events: Sequence[UsageEvent], keys_marked: bool = False) -> None:
    """After records of ``events`` were inserted by a statement of the caller's own: what
    usage_record_insert does next (the keys' last-used time, at most once a minute per key).
    ``keys_marked``: the caller's statement moved the keys ``api_key_mark_due`` named already
    (accounts.services.api_key_mark_used_sql); they are only noted."""
    if keys_marked:
        _keys_noted({event.api_key_id for event in events if event.api_key_id is not None}, time.monotonic())
    else:
        _api_keys_mark_used(events)


def api_key_mark_due(*, event: UsageEvent) -> bool:
    """Whether recording ``event`` would move its key's last-used time (this process moves each key's at
    most once a minute): a caller that records in a statement of its own then moves it in the same one."""
    if event.api_key_id is None:
        return False
    return time.monotonic() - _key_marked_at.get(event.api_key_id, float("-inf")) >= _KEY_MARK_INTERVAL_SECONDS


def usage_record_insert(*, event: UsageEvent, keyless: bool = False) -> bool:
    """The database quota backend's insert, inside its transaction: one statement, exact under
    concurrency. The record takes the request id unless another record holds it or a reservation of
    another request has it pending (then nothing is inserted and False is returned: the caller rolls
    back). ``keyless``: store it without holding the id (it never conflicts)."""
    record, reservation = quoted_table(UsageRecord), quoted_table(QuotaReservation)
    values = usage_record_values(event=event, keyless=keyless)
    created = execute(
        f"INSERT INTO {record} ({USAGE_RECORD_COLUMNS})"  # noqa: S608 - identifiers from _meta, values as parameters
        " SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s"
        f" WHERE NOT EXISTS (SELECT 1 FROM {reservation} WHERE team_id = %s AND request_id = %s)"
        " ON CONFLICT (team_id, request_key) DO NOTHING RETURNING id",
        [*values, event.team_id, event.request_id],
    )
    if created:
        _api_keys_mark_used([event])
    return bool(created)


def usage_request_ids_release(*, now: datetime, lookback: timedelta = timedelta(days=7)) -> int:
    """Free the request ids of records older than the retention (``request_key`` to NULL): a periodic
    task's job, so the unique index holds only the last day's ids. Looks back ``lookback`` beyond the
    cutoff only (a bounded index range per run, not the whole table); an id this misses (the task did
    not run for that long) is freed by the quota backends themselves when it is used again. Returns how
    many were freed."""
    cutoff = now - timedelta(seconds=settings.TIERLAB_REQUEST_ID_RETENTION_SECONDS)
    return UsageRecord.objects.filter(
        created_at__gte=cutoff - lookback, created_at__lt=cutoff, request_key__isnull=False
    ).update(request_key=None)


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
        _keys_noted(due, now)


def _keys_noted(key_ids: Collection[int], now: float) -> None:
    if len(_key_marked_at) + len(key_ids) > DEFAULT_MAX_ENTRIES:
        # Bounded (one entry per key in use): entries past the interval say nothing any more.
        for key_id in [k for k, at in _key_marked_at.items() if now - at >= _KEY_MARK_INTERVAL_SECONDS]:
            del _key_marked_at[key_id]
        if len(_key_marked_at) + len(key_ids) > DEFAULT_MAX_ENTRIES:  # more keys than that in one minute
            _key_marked_at.clear()  # at worst one extra UPDATE per key
    for key_id in key_ids:
        _key_marked_at[key_id] = now


_NEW_RECORD_FIELDS = (
    "request_id",
    "request_key",
    "team",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "created_at",
)


def usage_records_create_new(*, events: Sequence[UsageEvent]) -> int:
    """Store events whose (team, request id) no record holds and that are distinct within ``events``,
    without an API key, partner or request hash: the simulator's aggregated team-days
    (simulation/population.py), thousands at a time. One INSERT per call (the rows travel as one JSON
    parameter: core.sql.rows_cte), instead of ``usage_records_create``'s model instances and its
    look-ups of the ids already held, which such events never need. The unique key on (team, request
    id) still holds: an event whose id is held after all is not stored (ON CONFLICT DO NOTHING).
    Returns how many rows were stored."""
    if not events:
        return 0
    rows = [
        (
            event.request_id,
            event.request_id,
            event.team_id,
            event.model,
            event.prompt_tokens,
            event.completion_tokens,
            event.total_tokens,
            event.created_at,
        )
        for event in events
    ]
    suffix = "ON CONFLICT (team_id, request_key) DO NOTHING RETURNING id"
    return len(
        insert_rows(
            UsageRecord,
            _NEW_RECORD_FIELDS,
            rows,
            constants={"api_key": None, "partner_id": None, "request_hash": ""},
            suffix=suffix,
        )
    )
