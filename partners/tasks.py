"""Celery tasks of partners and licences: monthly statements and licence checks."""

from __future__ import annotations

from celery import shared_task

from partners import licensing


@shared_task(
    name="partners.tasks.partner_statements_issue",
    acks_late=True,
    reject_on_worker_lost=True,
    time_limit=600,
    soft_time_limit=540,
    ignore_result=True,
)
def partner_statements_issue() -> int:
    """Issue every partner's missing statements for the months that are over (beat: after month end;
    running it more often is harmless, each (partner, month) is issued once) and email them."""
    from partners import statements as partner_statements

    return partner_statements.partner_statements_issue()


@shared_task(
    name="partners.tasks.license_checks_run", acks_late=True, time_limit=300, soft_time_limit=240, ignore_result=True
)
def license_checks_run() -> int:
    """Scheduled hourly by beat: the MAU check for every model release date that has none yet. Safe to
    run twice: one check per release date (unique), one agreement per team."""
    return licensing.license_checks_run()
