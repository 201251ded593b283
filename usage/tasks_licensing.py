"""Celery tasks for licensing (imported by usage/tasks.py, so autodiscovery finds them)."""

from __future__ import annotations

from celery import shared_task

from usage import licensing

__all__ = ["license_checks_run"]


@shared_task(
    name="usage.tasks.license_checks_run", acks_late=True, time_limit=300, soft_time_limit=240, ignore_result=True
)
def license_checks_run() -> int:
    """Scheduled hourly by beat: the MAU check for every model release date that has none yet. Safe to
    run twice: one check per release date (unique), one agreement per team."""
    return licensing.license_checks_run()
