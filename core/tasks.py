"""Celery tasks of the shared kernel: the beat heartbeat that /healthz reports."""

from __future__ import annotations

from celery import shared_task

from core import services


@shared_task(name="core.tasks.heartbeat_record", acks_late=True, time_limit=30, soft_time_limit=20, ignore_result=True)
def heartbeat_record() -> None:
    """Scheduled by beat every 30 s (CELERY_BEAT_SCHEDULE); /healthz shows when it last ran."""
    services.heartbeat_record(name="beat")
