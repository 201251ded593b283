"""Every write of the simulation app's bookkeeping (stored scenarios' runs and their shards) goes
through here. The runs themselves write only to their own databases (simulation/runner.py)."""

from __future__ import annotations

import json
import logging
import tempfile
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from simulation.databases import SIMULATIONS_DIR, database_url_on, postgres_server_of_settings
from simulation.models import RunStatus, SimulationRun, SimulationShard, StoredScenario
from simulation.scenario import ScenarioError, scenario_parse

if TYPE_CHECKING:
    from simulation.runner import RunOutcome
    from simulation.scenario import Scenario

logger = logging.getLogger(__name__)
# A shard reports its progress to the database every this many simulated days.
PROGRESS_EVERY_DAYS = 7


def default_out_dir(*, name: str, seed: int, run_id: int | None = None) -> Path:
    return SIMULATIONS_DIR / (f"{name}-{seed}" if run_id is None else f"{name}-{seed}-run{run_id}")


def simulation_run_record(
    *, scenario: Scenario, seed: int, workers: int, payments: str, stored: StoredScenario | None = None
) -> SimulationRun:
    """A run about to start (or queued, from the admin): what the admin lists."""
    run = SimulationRun(
        scenario=stored,
        scenario_name=scenario.name,
        scenario_text=scenario.source,
        seed=seed,
        workers=workers,
        payments=payments,
    )
    run.full_clean()
    run.save()
    return run


def simulation_run_started(*, run: SimulationRun) -> None:
    SimulationRun.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, started_at=timezone.now())


def simulation_run_finished(
    *, run: SimulationRun, outcome: RunOutcome | None, out_dir: Path | None, error: str = ""
) -> None:
    """The run's end: its totals and where its files are, or why it failed."""
    SimulationRun.objects.filter(pk=run.pk).update(
        status=RunStatus.FAILED if outcome is None else RunStatus.SUCCEEDED,
        finished_at=timezone.now(),
        out_dir=str(out_dir or ""),
        error=error[-10_000:],
        totals=outcome.summary["totals"] if outcome is not None else None,
        team_days=outcome.team_days if outcome is not None else 0,
    )


@transaction.atomic
def stored_scenario_run_start(*, stored: StoredScenario, seed: int | None = None, workers: int = 1) -> SimulationRun:
    """Queue a run of a stored scenario (the admin's action); a Celery worker runs it
    (simulation.tasks.simulation_run_task)."""
    from simulation.tasks import simulation_run_task

    try:
        scenario = scenario_parse(stored.text, default_name=stored.name)
    except ScenarioError as exc:
        raise ValueError(f"{stored.name}: {exc}") from exc
    run = simulation_run_record(
        scenario=scenario,
        seed=stored.seed if seed is None else seed,
        workers=workers,
        payments="simulated",
        stored=stored,
    )
    transaction.on_commit(lambda: simulation_run_task.delay(run.pk))
    return run


def simulation_run_execute(*, run_id: int) -> SimulationRun:
    """Run a queued run (the Celery task's work): its shards as local processes of this worker, its
    files under var/simulations/<name>-<seed>-run<id>/. A run that is not queued is left alone (a
    redelivered task)."""
    from simulation.outputs import outputs_write
    from simulation.runner import run_scenario

    claimed = SimulationRun.objects.filter(pk=run_id, status=RunStatus.QUEUED).update(
        status=RunStatus.RUNNING, started_at=timezone.now()
    )
    run = SimulationRun.objects.get(pk=run_id)
    if not claimed:
        return run
    try:
        scenario = scenario_parse(run.scenario_text, default_name=run.scenario_name)
        outcome = run_scenario(scenario=scenario, seed=run.seed, payments=run.payments, shards=run.workers)
        out = default_out_dir(name=scenario.name, seed=run.seed, run_id=run.pk)
        outputs_write(out=out, scenarios=[scenario], outcomes=[outcome])
    except Exception:
        logger.exception("simulation run %s failed", run_id)
        simulation_run_finished(run=run, outcome=None, out_dir=None, error=traceback.format_exc())
    else:
        simulation_run_finished(run=run, outcome=outcome, out_dir=out)
    run.refresh_from_db()
    return run


# --- Shards on Celery workers ---------------------------------------------------------------------------


def simulation_shards_dispatch(
    *,
    scenario: Scenario,
    seed: int,
    payments: str,
    databases: list[str],
    run_id: int | None = None,
) -> tuple[SimulationRun, list[int]]:
    """Record a run's shards (one per database made for it) and queue a Celery task for each."""
    from simulation.tasks import simulation_shard_task

    with transaction.atomic():
        if run_id is None:
            run = simulation_run_record(scenario=scenario, seed=seed, workers=len(databases), payments=payments)
        else:
            run = SimulationRun.objects.get(pk=run_id)
            run.workers = len(databases)
            run.save(update_fields=["workers"])
        simulation_run_started(run=run)
        shards = [
            SimulationShard.objects.create(run=run, index=index, database=database)
            for index, database in enumerate(databases)
        ]
        ids = [shard.pk for shard in shards]
        transaction.on_commit(lambda: [simulation_shard_task.delay(shard_id) for shard_id in ids])
    return run, ids


def shard_database_url(database: str) -> str:
    """A shard's database as its process connects to it: a SQLite file, or a database on the platform's
    PostgreSQL server."""
    if database.endswith(".sqlite3"):
        return f"sqlite:///{database}"
    server = postgres_server_of_settings()
    if server is None:
        raise ValueError(f"shard database {database!r} is on PostgreSQL, but this process's database is not")
    return database_url_on(server, database)


def simulation_shard_execute(*, shard_id: int) -> SimulationShard:
    """Simulate one shard (the Celery task's work): its process, then its figures into the database.
    A shard that is not queued is left alone (a redelivered task).

    Everything the shard needs comes from the database (the run's scenario text and seed) and goes back
    there (its figures), so a worker on another machine can run it when the shards' databases are on
    PostgreSQL; a SQLite shard database is a file on the machine that started the run."""
    from simulation.runner import shard_command, shard_process_run

    claimed = SimulationShard.objects.filter(pk=shard_id, status=RunStatus.QUEUED).update(status=RunStatus.RUNNING)
    shard = SimulationShard.objects.select_related("run").get(pk=shard_id)
    if not claimed:
        return shard
    run = shard.run
    days = [0]

    def on_day() -> None:
        days[0] += 1
        if days[0] % PROGRESS_EVERY_DAYS == 0:
            SimulationShard.objects.filter(pk=shard_id).update(days_done=F("days_done") + PROGRESS_EVERY_DAYS)

    try:
        with tempfile.TemporaryDirectory(prefix="tierlab-shard-") as folder:
            scenario_path, result = Path(folder) / "scenario.toml", Path(folder) / "figures.json"
            scenario_path.write_text(run.scenario_text, encoding="utf-8")
            shard_process_run(
                command=shard_command(
                    scenario_path=scenario_path,
                    seed=run.seed,
                    shard=shard.index,
                    shards=run.workers,
                    payments=run.payments,
                    result=result,
                ),
                database_url=shard_database_url(shard.database),
                env_extra=None,
                on_day=on_day,
            )
            figures: dict[str, Any] = json.loads(result.read_text())
    except Exception:
        logger.exception("simulation shard %s failed", shard_id)
        SimulationShard.objects.filter(pk=shard_id).update(status=RunStatus.FAILED, error=traceback.format_exc())
    else:
        SimulationShard.objects.filter(pk=shard_id).update(
            status=RunStatus.SUCCEEDED, figures=figures, days_done=days[0]
        )
    shard.refresh_from_db()
    return shard
