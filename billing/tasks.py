"""Celery tasks of the billing engine and the Stripe webhook inbox. Thin: they call one service and log."""

from __future__ import annotations

import logging
from dataclasses import asdict

from celery import shared_task
from django.conf import settings

from billing import run, webhooks

logger = logging.getLogger(__name__)

# Beat runs the pass every minute (CELERY_BEAT_SCHEDULE["billing-run"]). The local part (period close)
# is quick and batch-committed; charging goes through Stripe (TIERLAB_PAYMENT_CONCURRENCY invoices at a
# time), so it gets a budget well inside the soft limit and leaves what it could not charge for the
# next pass (still due, nothing lost). Hitting the hard limit mid-charge is safe too: every attempt is
# recorded before Stripe is called, and the next pass recovers it (billing/payments.py, _payment_recover).
SOFT_TIME_LIMIT = 240
TIME_LIMIT = 300
CHARGE_BUDGET_SECONDS = 180


@shared_task(
    name="billing.tasks.billing_run",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    soft_time_limit=SOFT_TIME_LIMIT,
    time_limit=TIME_LIMIT,
    # No autoretry: the task is periodic, and the next beat (a minute later) is the retry. A pass is
    # safe to run twice at once (acks_late may redeliver it while another one runs).
)
def billing_run() -> dict:
    """One billing pass at the current time: close periods, charge what is due, end dunning."""
    result = run.billing_run(
        charge_budget_seconds=CHARGE_BUDGET_SECONDS,
        payment_concurrency=settings.TIERLAB_PAYMENT_CONCURRENCY,
        close_concurrency=settings.TIERLAB_CLOSE_CONCURRENCY,
    )
    summary = asdict(result)
    if result.errors:
        logger.warning("billing pass finished with %d error(s): %s", len(result.errors), summary)
    elif result.periods_closed or result.payments_attempted or result.downgraded:
        logger.info("billing pass: %s", summary)
    return summary


@shared_task(
    name="billing.tasks.stripe_event_process_task",
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
    name="billing.tasks.stripe_events_pending_process_task",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    soft_time_limit=240,
    time_limit=300,
)
def stripe_events_pending_process_task() -> int:
    """Periodic (beat): process stored events whose task was lost or gave up."""
    return webhooks.stripe_events_pending_process()
