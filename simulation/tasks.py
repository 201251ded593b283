"""Celery tasks of the simulator. Thin: they call one service.

A run or a shard takes as long as the scenario does (minutes, for a year of thousands of teams), far
beyond the platform's default task limits, so these carry their own. ``acks_late``: a worker lost
mid-run redelivers the task, which finds its run or shard no longer queued and leaves it (failed
runs are started again from the admin, with a new run)."""

from __future__ import annotations

from celery import shared_task

from simulation import services

TIME_LIMIT = 6 * 3600
SOFT_TIME_LIMIT = TIME_LIMIT - 60


@shared_task(
    name="simulation.tasks.simulation_run_task",
    acks_late=True,
    ignore_result=True,
    soft_time_limit=SOFT_TIME_LIMIT,
    time_limit=TIME_LIMIT,
)
def simulation_run_task(run_id: int) -> str:
    """Run a queued run of a stored scenario (started from the admin)."""
    return services.simulation_run_execute(run_id=run_id).status


@shared_task(
    name="simulation.tasks.simulation_shard_task",
    acks_late=True,
    ignore_result=True,
    soft_time_limit=SOFT_TIME_LIMIT,
    time_limit=TIME_LIMIT,
)
def simulation_shard_task(shard_id: int) -> str:
    """Simulate one shard of a run split over the workers (`manage.py simulate --workers N`)."""
    return services.simulation_shard_execute(shard_id=shard_id).status
