"""Logging filters that keep `make run`'s console to what a person needs."""

from __future__ import annotations

import logging
from datetime import timedelta

# A periodic task sent at least this often is "frequent": its routine lines are left out.
FREQUENT_TASK_MAX_INTERVAL_SECONDS = 600


def frequent_periodic_tasks(beat_schedule: dict) -> frozenset[str]:
    """Names of the tasks in ``beat_schedule`` (CELERY_BEAT_SCHEDULE) that run every 10 minutes or more
    often. Entries with a crontab or another schedule object are not counted."""
    names = set()
    for entry in beat_schedule.values():
        schedule = entry.get("schedule")
        seconds = schedule.total_seconds() if isinstance(schedule, timedelta) else schedule
        if isinstance(seconds, int | float) and seconds <= FREQUENT_TASK_MAX_INTERVAL_SECONDS:
            names.add(entry["task"])
    return frozenset(names)


class FrequentTaskLinesFilter(logging.Filter):
    """Drops the Celery worker's INFO "Task ... received" and "Task ... succeeded" lines for frequent
    periodic tasks (at most every 10 minutes: with the heartbeat, rollups, billing pass, alerts and sweeps
    they were dozens of lines a minute). Warnings, errors, retries and failures of the same tasks, and
    every line of other tasks, pass. Celery logs both lines with a dict of arguments holding the task's
    ``name`` (celery.app.trace.LOG_SUCCESS / LOG_RECEIVED)."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._tasks: frozenset[str] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not isinstance(record.args, dict):
            return True
        if self._tasks is None:
            from django.conf import settings

            self._tasks = frequent_periodic_tasks(getattr(settings, "CELERY_BEAT_SCHEDULE", {}))
        return record.args.get("name") not in self._tasks
