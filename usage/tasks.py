from __future__ import annotations

from celery import shared_task

from usage import services


@shared_task(name="usage.tasks.heartbeat_record", acks_late=True, time_limit=30, soft_time_limit=20, ignore_result=True)
def heartbeat_record() -> None:
    """Scheduled by beat every 30 s (CELERY_BEAT_SCHEDULE); /healthz shows when it last ran."""
    services.heartbeat_record(name="beat")


@shared_task(
    name="usage.tasks.usage_stream_drain",
    acks_late=True,
    time_limit=120,
    soft_time_limit=100,
    ignore_result=True,
    autoretry_for=(ConnectionError, OSError),
    retry_backoff=True,
    max_retries=5,
)
def usage_stream_drain() -> int:
    """Move usage events from the Redis stream into UsageRecord rows, in batches, acknowledging each
    batch only after its rows are committed (so a crash re-delivers, and the unique constraint makes
    the re-delivery a no-op). Scheduled every 2 s by beat; returns 0 at once on the database backend,
    which writes records on the request path."""
    from usage.quotas.redis import drain_usage_stream

    return drain_usage_stream(batch_size=1000)


# Tasks of the other usage topics live in their own modules; importing them here registers them.
from usage.tasks_insight import *  # noqa: E402, F403
from usage.tasks_licensing import *  # noqa: E402, F403
from usage.tasks_partners import *  # noqa: E402, F403
