"""Every write to usage data goes through here."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

from django.db.models import F
from django.utils import timezone

from accounts import services as account_services
from usage.models import Heartbeat, UsageRecord
from usage.quotas.base import UsageEvent


def heartbeat_record(*, name: str = "beat", now: datetime | None = None) -> Heartbeat:
    """Record that the periodic task ``name`` ran at ``now``. Safe to run twice: it only moves the time."""
    now = now or timezone.now()
    updated = Heartbeat.objects.filter(name=name).update(beat_at=now, count=F("count") + 1)
    if not updated:
        Heartbeat.objects.get_or_create(name=name, defaults={"beat_at": now, "count": 1})
    return Heartbeat.objects.get(name=name)


def usage_records_create(*, events: Sequence[UsageEvent]) -> int:
    """Store admitted-request events as ``UsageRecord`` rows, each exactly once.

    Safe to call again with events already stored (a re-delivered stream batch, a client retry with
    the same request id): the unique (team, request id) constraint makes repeats no-ops. Returns how
    many rows were new. Must run inside the caller's transaction when the caller needs the records
    and its own writes to commit together.
    """
    if not events:
        return 0
    rows = [
        UsageRecord(
            request_id=e.request_id,
            team_id=e.team_id,
            api_key_id=e.api_key_id,
            model=e.model,
            prompt_tokens=e.prompt_tokens,
            completion_tokens=e.completion_tokens,
            total_tokens=e.total_tokens,
            partner_id=e.partner_id,
            created_at=e.created_at,
        )
        for e in events
    ]
    keys = {(e.team_id, e.request_id) for e in events}
    team_ids = {team_id for team_id, _ in keys}
    before = UsageRecord.objects.filter(
        team_id__in=team_ids, request_id__in={request_id for _, request_id in keys}
    ).count()
    UsageRecord.objects.bulk_create(rows, ignore_conflicts=True)
    _api_keys_mark_used(events)
    after = UsageRecord.objects.filter(
        team_id__in=team_ids, request_id__in={request_id for _, request_id in keys}
    ).count()
    return after - before


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
