"""Writes of the shared kernel: the heartbeat."""

from __future__ import annotations

from datetime import datetime

from django.db.models import F
from django.utils import timezone

from core.models import Heartbeat


def heartbeat_record(*, name: str = "beat", now: datetime | None = None) -> Heartbeat:
    """Record that the periodic task ``name`` ran at ``now``. Safe to run twice: it only moves the time."""
    now = now or timezone.now()
    updated = Heartbeat.objects.filter(name=name).update(beat_at=now, count=F("count") + 1)
    if not updated:
        Heartbeat.objects.get_or_create(name=name, defaults={"beat_at": now, "count": 1})
    return Heartbeat.objects.get(name=name)
