"""Celery tasks of usage: the Redis stream drain, the reservation sweeper, request-id release, rollups
and alerts."""

from __future__ import annotations

from celery import shared_task


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


@shared_task(
    name="usage.tasks.usage_reservations_sweep",
    acks_late=True,
    time_limit=300,
    soft_time_limit=270,
    ignore_result=True,
)
def usage_reservations_sweep() -> int:
    """Refund the quota reservations that were never settled (their process crashed or lost its
    connection) once they are older than TIERLAB_RESERVATION_TIMEOUT_SECONDS, and free their request
    ids (every 60 s by beat). Safe to run twice or concurrently: each reservation is given back once."""
    from django.utils import timezone

    from usage.quotas import get_quota_backend

    return get_quota_backend().sweep(now=timezone.now())


@shared_task(
    name="usage.tasks.usage_request_ids_release",
    acks_late=True,
    time_limit=600,
    soft_time_limit=540,
    ignore_result=True,
)
def usage_request_ids_release() -> int:
    """Free the request ids of usage records older than TIERLAB_REQUEST_ID_RETENTION_SECONDS (hourly by
    beat); an id may then be used for a new request. Idempotent."""
    from django.utils import timezone

    from usage.services import usage_request_ids_release as release

    return release(now=timezone.now())


@shared_task(
    name="usage.tasks.usage_rollup_fold", acks_late=True, time_limit=600, soft_time_limit=540, ignore_result=True
)
def usage_rollup_fold() -> int:
    """Fold new usage records into the hourly and daily rollups (every 30 s by beat). Safe to run
    twice or concurrently: the cursor moves with the rollup rows, under a row lock."""
    from usage.rollups import usage_rollup_fold_settled

    return usage_rollup_fold_settled()


@shared_task(
    name="usage.tasks.usage_alerts_evaluate", acks_late=True, time_limit=300, soft_time_limit=270, ignore_result=True
)
def usage_alerts_evaluate() -> int:
    """Create and email the 80% / 100% / spend-cap alerts (every 60 s by beat); one per threshold per
    period, by a unique constraint, however often it runs."""
    from usage.alerts import usage_alerts_evaluate as evaluate

    return evaluate()
