"""Celery tasks of the shared kernel: the beat heartbeat that /healthz reports, the invalidation feed's pruning."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from core import invalidation, services


@shared_task(name="core.tasks.heartbeat_record", acks_late=True, time_limit=30, soft_time_limit=20, ignore_result=True)
def heartbeat_record() -> None:
    """Scheduled by beat every 30 s (CELERY_BEAT_SCHEDULE); /healthz shows when it last ran."""
    services.heartbeat_record(name="beat")


@shared_task(
    name="core.tasks.cache_invalidations_prune", acks_late=True, time_limit=120, soft_time_limit=100, ignore_result=True
)
def cache_invalidations_prune() -> None:
    """Scheduled by beat hourly: the invalidation feed's rows older than an hour (core/invalidation.py)."""
    invalidation.cache_invalidations_prune(now=timezone.now())
