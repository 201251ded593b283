"""Celery tasks for partners (imported by usage/tasks.py, so autodiscovery finds them)."""

from __future__ import annotations

from celery import shared_task

__all__ = ["partner_statements_issue"]


@shared_task(
    name="usage.tasks.partner_statements_issue",
    acks_late=True,
    reject_on_worker_lost=True,
    time_limit=600,
    soft_time_limit=540,
    ignore_result=True,
)
def partner_statements_issue() -> int:
    """Issue every partner's missing statements for the months that are over (beat: after month end;
    running it more often is harmless, each (partner, month) is issued once) and email them."""
    from usage import partner_statements

    return partner_statements.partner_statements_issue()
