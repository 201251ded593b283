"""Celery tasks of the Stripe webhook inbox (tiers/webhooks.py).

Not autodiscovered (Celery only imports ``tasks.py``): TiersConfig.ready() imports this module.
"""

from __future__ import annotations

from celery import shared_task

from tiers import webhooks


@shared_task(
    name="tiers.tasks_webhooks.stripe_event_process_task",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    soft_time_limit=60,
    time_limit=90,
    # Any failure is retried (a locked database, a billing error fixed by a deploy...): processing is
    # idempotent, and the error is recorded on the event row meanwhile. About 2 hours of backoff in all;
    # after that the periodic sweep (stripe_events_pending_process_task) keeps trying.
    autoretry_for=(Exception,),
    retry_backoff=5,
    retry_backoff_max=30 * 60,
    retry_jitter=True,
    max_retries=8,
)
def stripe_event_process_task(stripe_event_pk: int) -> None:
    webhooks.stripe_event_process(event_id=stripe_event_pk)


@shared_task(
    name="tiers.tasks_webhooks.stripe_events_pending_process_task",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    soft_time_limit=240,
    time_limit=300,
)
def stripe_events_pending_process_task() -> int:
    """Periodic (beat): process stored events whose task was lost or gave up."""
    return webhooks.stripe_events_pending_process()
