"""Celery tasks of the billing engine (tiers/billing.py). Thin: they call one service and log."""

from __future__ import annotations

import logging
from dataclasses import asdict

from celery import shared_task

from tiers import billing

logger = logging.getLogger(__name__)

# Beat runs the pass every minute (CELERY_BEAT_SCHEDULE["billing-run"]). The local part (period close)
# is quick and batch-committed; charging goes through Stripe one invoice at a time, so it gets a budget
# well inside the soft limit and leaves what it could not charge for the next pass (still due, nothing
# lost). Hitting the hard limit mid-charge is safe too: every attempt is recorded before Stripe is
# called, and the next pass recovers it (tiers/billing.py, _payment_recover).
SOFT_TIME_LIMIT = 240
TIME_LIMIT = 300
CHARGE_BUDGET_SECONDS = 180


@shared_task(
    name="tiers.tasks.billing_run",
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
    result = billing.billing_run(charge_budget_seconds=CHARGE_BUDGET_SECONDS)
    summary = asdict(result)
    if result.errors:
        logger.warning("billing pass finished with %d error(s): %s", len(result.errors), summary)
    elif result.periods_closed or result.payments_attempted or result.downgraded:
        logger.info("billing pass: %s", summary)
    return summary
