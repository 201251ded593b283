"""Celery tasks of the accounts app: housekeeping of the account API's abuse throttle."""

from __future__ import annotations

import time

from celery import shared_task

from accounts.throttling import throttle_counters_prune


@shared_task(name="accounts.tasks.throttle_counters_prune", acks_late=True, time_limit=300, ignore_result=True)
def throttle_counters_prune_task() -> int:
    """Scheduled hourly by beat (CELERY_BEAT_SCHEDULE): drop throttle counters idle for a day."""
    return throttle_counters_prune(now=time.time())
