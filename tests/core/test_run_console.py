"""What `make run` prints and schedules (issue 16, finding 14): the usage-stream drain runs only with the
Redis quota backend, and the worker leaves out the routine lines of frequent periodic tasks."""

from __future__ import annotations

import logging

import pytest
from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS
from django.conf import settings
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler

from config.celery import app
from core.logs import frequent_periodic_tasks

DRAIN = "usage-stream-drain"


@pytest.mark.django_db(transaction=True)  # the scheduler closes the connection, as beat does
@pytest.mark.parametrize("backend", ["database", "redis"])
def test_beat_schedules_the_usage_stream_drain_only_for_the_redis_backend(backend, monkeypatch):
    # The schedule as settings build it for this backend (config/settings.py sets "enabled" from it).
    schedule = {name: dict(entry) for name, entry in settings.CELERY_BEAT_SCHEDULE.items()}
    schedule[DRAIN]["enabled"] = backend == "redis"
    monkeypatch.setattr(app.conf, "beat_schedule", schedule)
    # A stored entry from an earlier run, enabled: what beat found in every existing database.
    every_2s, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name=DRAIN, task="usage.tasks.usage_stream_drain", interval=every_2s, enabled=True)

    scheduler = DatabaseScheduler(app=app, lazy=False)  # what `celery beat` does at start

    assert PeriodicTask.objects.get(name=DRAIN).enabled is (backend == "redis")
    assert (DRAIN in scheduler.schedule) is (backend == "redis")
    assert "heartbeat" in scheduler.schedule


def test_the_settings_enable_the_drain_for_the_configured_backend_only():
    assert settings.CELERY_BEAT_SCHEDULE[DRAIN]["enabled"] is (settings.TIERLAB_QUOTA_BACKEND == "redis")


def test_frequent_periodic_tasks_are_those_beat_sends_every_10_minutes_or_more_often():
    frequent = frequent_periodic_tasks(settings.CELERY_BEAT_SCHEDULE)
    assert {"core.tasks.heartbeat_record", "billing.tasks.billing_run", "usage.tasks.usage_rollup_fold"} <= frequent
    assert "partners.tasks.partner_statements_issue" not in frequent  # hourly: its lines stay


def _line(task: str) -> dict:
    return {"id": "abc", "name": task, "runtime": 0.01, "return_value": None, "args": "()", "kwargs": "{}"}


def test_the_worker_leaves_out_received_and_succeeded_lines_of_frequent_tasks_only(caplog):
    caplog.set_level(logging.INFO, logger="celery.app.trace")
    caplog.set_level(logging.INFO, logger="celery.worker.strategy")
    trace, strategy = logging.getLogger("celery.app.trace"), logging.getLogger("celery.worker.strategy")

    strategy.info(LOG_RECEIVED, _line("core.tasks.heartbeat_record"))
    trace.info(LOG_SUCCESS, _line("core.tasks.heartbeat_record"))
    trace.info(LOG_SUCCESS, _line("partners.tasks.partner_statements_issue"))
    trace.error("Task %(name)s[%(id)s] raised unexpected: %(exc)s", {"name": "core.tasks.heartbeat_record",
                                                                     "id": "abc", "exc": "boom"})  # fmt: skip

    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "Task partners.tasks.partner_statements_issue[abc] succeeded in 0.01s: None",
        "Task core.tasks.heartbeat_record[abc] raised unexpected: boom",
    ]
