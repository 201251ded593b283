"""Running a scenario: each shard in a process and a database of its own, the figures merged.

Why a process per shard: the services read and write Django's default database, and a run must
never touch the platform's. A process started with ``config.settings_simulation`` has the run's
database as its only one (simulation/databases.py), so there is nothing to route and nothing to get
wrong; it also keeps the moved clock (time-machine) and the simulated payment processor out of the
process that started the run (the command, a web process or a Celery worker).

Shards (``--workers N``): the population is split by team (simulation/population.shard_of; partners
and licensees in shard 0), every shard simulated side by side, and their figures added up, which
gives the same summary.json as one process (a team's behaviour depends on nothing but its own
stream and state). They run either as local processes of this machine (``run_scenario``), or as
Celery tasks on the workers of the platform's broker (``run_scenario_on_workers``; simulation/tasks.py),
each worker starting the shard's process and writing its figures to the platform's database
(``SimulationShard``), where this process collects them.

Each run works in ``var/simulations/.work/<id>/`` (the scenario text, the SQLite files, the figures),
removed afterwards unless ``keep_work`` is set. Progress: a shard's process prints
``@progress <days done> <days>`` lines.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from simulation.databases import SIMULATIONS_DIR, ShardDatabase, child_env, manage, shard_database_create
from simulation.results import diagnostics_merge, summary_build
from simulation.scenario import Scenario

PAYMENTS = ("simulated", "localstripe")
PROGRESS_PREFIX = "@progress "
# A Celery shard that no worker has started after this long: the run gives up and says why.
WORKER_PICKUP_TIMEOUT_SECONDS = 120.0


class SimulationFailed(Exception):
    """A shard failed; the message carries the end of its output."""


@dataclass
class RunOutcome:
    summary: dict[str, Any]
    diagnostics: dict[str, int]
    seconds: float
    payments: str
    shards: int
    team_days: int = 0
    charges: int = 0
    cpu_seconds: float = 0.0  # the shards' processes' CPU time, added up
    seconds_by_phase: dict[str, float] = field(default_factory=dict)
    shard_figures: list[dict[str, Any]] = field(default_factory=list)


def work_dir_new() -> Path:
    folder = SIMULATIONS_DIR / ".work" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    return folder


def shard_command(*, scenario_path: Path, seed: int, shard: int, shards: int, payments: str, result: Path) -> list[str]:
    return manage(
        "simulate_shard",
        str(scenario_path),
        *("--seed", str(seed), "--shard", str(shard), "--shards", str(shards)),
        *("--payments", payments, "--result", str(result)),
    )


def shard_process_run(
    *, command: list[str], database_url: str, env_extra: dict[str, str] | None, on_day: Callable[[], None] | None
) -> None:
    """Run one shard's process to its end; progress lines call ``on_day``. Raises SimulationFailed."""
    process = subprocess.Popen(  # noqa: S603 - our own manage.py, arguments we built
        command,
        env=child_env(database_url, env_extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    output: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(PROGRESS_PREFIX):
                if on_day is not None:
                    on_day()
            else:
                output.append(line)
                del output[:-200]
        code = process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if code != 0:
        raise SimulationFailed(f"the shard's process exited {code}:\n{''.join(output)[-4000:]}")


def _in_threads(jobs: list[Callable[[], None]]) -> None:
    """Run ``jobs`` side by side (each waits on a process); re-raise the first failure."""
    errors: list[BaseException] = []

    def guarded(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # reported below, in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(job,), daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


@contextlib.contextmanager
def _work(scenario: Scenario, keep_work: bool) -> Iterator[tuple[Path, Path]]:
    work = work_dir_new()
    try:
        scenario_path = work / "scenario.toml"
        scenario_path.write_text(scenario.source, encoding="utf-8")
        yield work, scenario_path
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)


def _databases(work: Path, shards: int, server_url: str | None) -> list[ShardDatabase]:
    return [
        shard_database_create(work=work, run_label=work.name.replace("-", "_"), index=i, server_url=server_url)
        for i in range(shards)
    ]


def run_scenario(
    *,
    scenario: Scenario,
    seed: int,
    payments: str = "simulated",
    shards: int = 1,
    progress: Callable[[int, int], None] | None = None,
    keep_work: bool = False,
    env_extra: dict[str, str] | None = None,
    server_url: str | None = None,
) -> RunOutcome:
    """Run ``scenario`` with ``seed`` in ``shards`` local processes side by side and merge their
    figures. ``progress(done, total)`` counts shard-days; ``server_url``: a PostgreSQL server for the
    shards' databases (default: SQLite files)."""
    started = time.monotonic()
    days = (scenario.end - scenario.start).days
    lock, done = threading.Lock(), [0]

    def tick() -> None:
        with lock:
            done[0] += 1
            if progress is not None:
                progress(done[0], days * shards)

    with _work(scenario, keep_work) as (work, scenario_path):
        databases = _databases(work, shards, server_url)
        try:
            results = [work / f"shard-{i}.json" for i in range(shards)]
            _in_threads(
                [
                    lambda i=i: shard_process_run(
                        command=shard_command(
                            scenario_path=scenario_path,
                            seed=seed,
                            shard=i,
                            shards=shards,
                            payments=payments,
                            result=results[i],
                        ),
                        database_url=databases[i].url,
                        env_extra=env_extra,
                        on_day=tick,
                    )
                    for i in range(shards)
                ]
            )
            figures = [json.loads(path.read_text()) for path in results]
        finally:
            if not keep_work:
                for database in databases:
                    database.drop()
    return outcome_from_figures(
        scenario=scenario, seed=seed, figures=figures, seconds=time.monotonic() - started, payments=payments
    )


def run_scenario_on_workers(
    *,
    scenario: Scenario,
    seed: int,
    shards: int,
    payments: str = "simulated",
    progress: Callable[[int, int], None] | None = None,
    keep_work: bool = False,
    server_url: str | None = None,
    run_id: int | None = None,
) -> RunOutcome:
    """Like ``run_scenario``, with each shard a Celery task (simulation.tasks.simulation_shard_task) on
    the platform's broker, its figures collected from the platform's database. The shards' databases
    are made here (PostgreSQL ones on ``server_url``, by default the platform's own server if it is
    PostgreSQL) and dropped at the end."""
    from simulation import services

    started = time.monotonic()
    days = (scenario.end - scenario.start).days
    with _work(scenario, keep_work) as (work, _):
        databases = _databases(work, shards, server_url)
        try:
            _, shard_ids = services.simulation_shards_dispatch(
                scenario=scenario,
                seed=seed,
                payments=payments,
                databases=[database.label for database in databases],
                run_id=run_id,
            )
            figures = _shards_wait(shard_ids, days=days, progress=progress)
        finally:
            if not keep_work:
                for database in databases:
                    database.drop()
    return outcome_from_figures(
        scenario=scenario, seed=seed, figures=figures, seconds=time.monotonic() - started, payments=payments
    )


def _shards_wait(
    shard_ids: list[int], *, days: int, progress: Callable[[int, int], None] | None
) -> list[dict[str, Any]]:
    from simulation.models import RunStatus, SimulationShard

    dispatched = time.monotonic()
    while True:
        rows = list(SimulationShard.objects.filter(pk__in=shard_ids).order_by("index"))
        if progress is not None:
            progress(sum(row.days_done for row in rows), days * len(rows))
        failed = [row for row in rows if row.status == RunStatus.FAILED]
        if failed:
            raise SimulationFailed(f"shard {failed[0].index} failed on its worker:\n{failed[0].error[-4000:]}")
        if all(row.status == RunStatus.SUCCEEDED for row in rows):
            return [row.figures for row in rows]
        waiting = all(row.status == RunStatus.QUEUED for row in rows)
        if waiting and time.monotonic() - dispatched > WORKER_PICKUP_TIMEOUT_SECONDS:
            raise SimulationFailed(
                f"no Celery worker started a shard in {WORKER_PICKUP_TIMEOUT_SECONDS:.0f} s "
                f"(broker {settings.CELERY_BROKER_URL.split('://')[0]}://): start one (`make run` does), "
                "or run the shards as local processes (--local)."
            )
        time.sleep(0.5)


def outcome_from_figures(
    *, scenario: Scenario, seed: int, figures: list[dict[str, Any]], seconds: float, payments: str
) -> RunOutcome:
    return RunOutcome(
        summary=summary_build(scenario=scenario, seed=seed, shards=figures),
        diagnostics=diagnostics_merge(figures),
        seconds=seconds,
        payments=payments,
        shards=len(figures),
        team_days=sum(int(f.get("team_days", 0)) for f in figures),
        charges=sum(int(f.get("charges", 0)) for f in figures),
        cpu_seconds=round(sum(float(f.get("cpu_seconds", 0.0)) for f in figures), 3),
        seconds_by_phase={
            phase: round(sum(f.get("seconds_by_phase", {}).get(phase, 0.0) for f in figures), 3)
            for phase in sorted({phase for f in figures for phase in f.get("seconds_by_phase", {})})
        },
        shard_figures=figures,
    )


# --- The command's runs: progress bar, localstripe ------------------------------------------------------


def simulate(
    *,
    scenario: Scenario,
    seed: int,
    payments: str = "simulated",
    workers: int = 1,
    local: bool = True,
    keep_work: bool = False,
    show_progress: bool = True,
    stderr: Any = None,
    server_url: str | None = None,
    run_id: int | None = None,
) -> RunOutcome:
    """A run with a progress bar (rich, on stderr), its shards local processes (``local``) or Celery
    tasks; for ``payments="localstripe"`` a localstripe server of the run's own on a free loopback
    port, stopped afterwards."""
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with contextlib.ExitStack() as stack:
        env_extra = None
        if payments == "localstripe":
            env_extra = {"STRIPE_API_BASE": stack.enter_context(localstripe_started())}
        console = Console(file=getattr(stderr, "_out", stderr) or sys.stderr)
        bar = stack.enter_context(
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("shard-days"),
                TimeElapsedColumn(),
                console=console,
                disable=not show_progress,
            )
        )
        days = (scenario.end - scenario.start).days
        task = bar.add_task(f"{scenario.name} (seed {seed})", total=days * workers)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done)

        if local or workers == 1:
            return run_scenario(
                scenario=scenario,
                seed=seed,
                payments=payments,
                shards=workers,
                progress=progress,
                keep_work=keep_work,
                env_extra=env_extra,
                server_url=server_url,
            )
        if payments == "localstripe":
            raise SimulationFailed("--payments localstripe runs in local processes only (add --local).")
        return run_scenario_on_workers(
            scenario=scenario,
            seed=seed,
            shards=workers,
            payments=payments,
            progress=progress,
            keep_work=keep_work,
            server_url=server_url,
            run_id=run_id,
        )


def _free_loopback_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def localstripe_answers(base_url: str) -> bool:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{base_url}/v1/customers?limit=1")  # noqa: S310 - http://127.0.0.1
    request.add_header("Authorization", f"Bearer {settings.STRIPE_SECRET_KEY}")
    try:
        with urllib.request.urlopen(request, timeout=1) as response:  # noqa: S310
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def localstripe_started(timeout: float = 30.0) -> Iterator[str]:
    """``manage.py localstripe`` on a free loopback port (state in memory, no webhook), waited on
    until it answers; yields its base URL and stops it (TERM, then KILL) on the way out."""
    port = _free_loopback_port()
    process = subprocess.Popen(  # noqa: S603 - our own manage.py
        manage("localstripe", "--port", str(port), "--state", "memory", "--webhook-url", ""),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not localstripe_answers(base_url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SimulationFailed("localstripe did not start for the run.")
            time.sleep(0.2)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
