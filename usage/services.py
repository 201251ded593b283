"""Every write to usage data goes through here."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.db.models import F
from django.utils import timezone

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
    after = UsageRecord.objects.filter(
        team_id__in=team_ids, request_id__in={request_id for _, request_id in keys}
    ).count()
    return after - before
