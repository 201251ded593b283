"""Running a scenario: each shard in a process and a database of its own, the figures merged.

Why a process per shard: the services read and write Django's default database, and a run must
never touch the platform's. A child process started with ``config.settings_simulation`` has the run's
database as its only one (a new SQLite file by default), so there is nothing to route and nothing
to get wrong; it also keeps the child's moved clock (time-machine) and the simulated payment processor
out of the process that started it (a web or Celery worker, or the command).

The database: SQLite files are copied from a template migrated once per set of migrations
(``var/simulations/.schema/<hash>.sqlite3``: migrating takes seconds, copying milliseconds). Each
run works in ``var/simulations/.work/<id>/`` (the scenario text, one database and one figures file
per shard), removed afterwards unless ``keep_work`` is set.

Progress: the child prints ``@progress <days done> <days>`` lines, which ``shards_run`` reports
through its ``progress`` callback (the command draws a bar with them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from simulation.results import diagnostics_merge, summary_build
from simulation.scenario import Scenario, scenario_parse

SIMULATIONS_DIR = Path(settings.VAR_DIR) / "simulations"
PAYMENTS = ("simulated", "localstripe")
PROGRESS_PREFIX = "@progress "


class SimulationFailed(Exception):
    """A shard's process failed; the message carries the end of its output."""


@dataclass
class RunOutcome:
    summary: dict[str, Any]
    diagnostics: dict[str, int]
    seconds: float
    payments: str
    shards: int
    team_days: int = 0
    charges: int = 0
    shard_figures: list[dict[str, Any]] = field(default_factory=list)


def _child_env(database_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "config.settings_simulation"
    env["TIERLAB_SIMULATION_DATABASE_URL"] = database_url
    env.pop("DATABASE_URL", None)  # the child's only database is the run's
    env.update(extra or {})
    return env


def _manage(*args: str) -> list[str]:
    return [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), *args]


def migrations_digest() -> str:
    """A digest of every migration file of the project and of the installed packages' versions that
    ship migrations (Django, allauth, django-celery-beat): a new migration means a new template."""
    import allauth
    import django
    import django_celery_beat

    digest = hashlib.sha256(f"{django.__version__} {allauth.__version__} {django_celery_beat.__version__}".encode())
    for path in sorted(Path(settings.BASE_DIR).glob("*/migrations/*.py")):
        digest.update(str(path.relative_to(settings.BASE_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def schema_template() -> Path:
    """A migrated, empty SQLite database to copy for each run (made once per set of migrations)."""
    folder = SIMULATIONS_DIR / ".schema"
    template = folder / f"{migrations_digest()}.sqlite3"
    if template.exists():
        return template
    folder.mkdir(parents=True, exist_ok=True)
    building = folder / f".{template.stem}-{uuid.uuid4().hex[:8]}.sqlite3"
    try:
        completed = subprocess.run(  # noqa: S603 - our own manage.py
            _manage("migrate", "--no-input", "-v0"),
            env=_child_env(f"sqlite:///{building}"),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if completed.returncode != 0:
            raise SimulationFailed(f"migrating the simulation template failed:\n{completed.stderr[-3000:]}")
        os.replace(building, template)  # atomic: a concurrent run sees a whole template or none
    finally:
        building.unlink(missing_ok=True)
    return template


def work_dir_new() -> Path:
    folder = SIMULATIONS_DIR / ".work" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    return folder


@dataclass
class ShardJob:
    """One shard's process: its database and where it writes its figures."""

    index: int
    database_url: str
    result_path: Path
    process: subprocess.Popen | None = None
    done_days: int = 0
    output: list[str] = field(default_factory=list)


def shard_database(work: Path, index: int) -> str:
    target = work / f"shard-{index}.sqlite3"
    shutil.copyfile(schema_template(), target)
    return f"sqlite:///{target}"


def shard_start(
    job: ShardJob,
    *,
    scenario_path: Path,
    seed: int,
    shards: int,
    payments: str,
    env_extra: dict[str, str] | None = None,
) -> None:
    command = _manage(
        "simulate_shard",
        str(scenario_path),
        "--seed",
        str(seed),
        "--shard",
        str(job.index),
        "--shards",
        str(shards),
        "--payments",
        payments,
        "--result",
        str(job.result_path),
    )
    job.process = subprocess.Popen(  # noqa: S603 - our own manage.py, arguments we built
        command,
        env=_child_env(job.database_url, env_extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )


def shard_wait(job: ShardJob, on_day: Callable[[], None] | None = None) -> dict[str, Any]:
    """Read the shard's output to the end (progress lines call ``on_day``), then its figures."""
    assert job.process is not None and job.process.stdout is not None
    for line in job.process.stdout:
        if line.startswith(PROGRESS_PREFIX):
            job.done_days += 1
            if on_day is not None:
                on_day()
        else:
            job.output.append(line)
            del job.output[:-200]
    code = job.process.wait()
    if code != 0 or not job.result_path.exists():
        raise SimulationFailed(f"shard {job.index} exited {code}:\n{''.join(job.output)[-4000:]}")
    return json.loads(job.result_path.read_text())


def run_scenario(
    *,
    scenario: Scenario,
    seed: int,
    payments: str = "simulated",
    shards: int = 1,
    progress: Callable[[int, int], None] | None = None,
    keep_work: bool = False,
    env_extra: dict[str, str] | None = None,
) -> RunOutcome:
    """Run ``scenario`` with ``seed`` in ``shards`` local processes side by side (each its own database)
    and merge their figures; ``progress(done, total)`` counts shard-days."""
    started = time.monotonic()
    work = work_dir_new()
    try:
        scenario_path = work / "scenario.toml"
        scenario_path.write_text(scenario.source, encoding="utf-8")
        days = (scenario.end - scenario.start).days
        jobs = [
            ShardJob(index=i, database_url=shard_database(work, i), result_path=work / f"shard-{i}.json")
            for i in range(shards)
        ]
        for job in jobs:
            shard_start(
                job, scenario_path=scenario_path, seed=seed, shards=shards, payments=payments, env_extra=env_extra
            )
        total = days * shards
        done = [0]

        def tick() -> None:
            done[0] += 1
            if progress is not None:
                progress(done[0], total)

        figures = _wait_all(jobs, tick)
    finally:
        for job in locals().get("jobs", []):
            if job.process is not None and job.process.poll() is None:
                job.process.kill()
                job.process.wait()
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    return outcome_from_figures(
        scenario=scenario, seed=seed, figures=figures, seconds=time.monotonic() - started, payments=payments
    )


def _wait_all(jobs: list[ShardJob], tick: Callable[[], None]) -> list[dict[str, Any]]:
    if len(jobs) == 1:
        return [shard_wait(jobs[0], tick)]
    # Several shards: one reader thread each, so no pipe fills up while another is read.
    import threading

    results: dict[int, dict[str, Any]] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def locked_tick() -> None:
        with lock:
            tick()

    def read(job: ShardJob) -> None:
        try:
            results[job.index] = shard_wait(job, locked_tick)
        except BaseException as exc:  # reported below, in this thread
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(job,), daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [results[job.index] for job in jobs]


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
        shard_figures=figures,
    )


def scenario_from_text(text: str, *, name: str) -> Scenario:
    return scenario_parse(text, default_name=name)


# --- The command's runs: progress bar, localstripe ------------------------------------------------------


def simulate(
    *,
    scenario: Scenario,
    seed: int,
    payments: str = "simulated",
    workers: int = 1,
    keep_work: bool = False,
    show_progress: bool = True,
    stderr: Any = None,
) -> RunOutcome:
    """``run_scenario`` with a progress bar (rich, on stderr) and, for ``payments="localstripe"``, a
    localstripe server of the run's own on a free loopback port, stopped afterwards."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

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
                TimeRemainingColumn(),
                console=console,
                disable=not show_progress,
            )
        )
        days = (scenario.end - scenario.start).days
        task = bar.add_task(f"{scenario.name} (seed {seed})", total=days * workers)
        return run_scenario(
            scenario=scenario,
            seed=seed,
            payments=payments,
            shards=workers,
            progress=lambda done, total: bar.update(task, completed=done),
            keep_work=keep_work,
            env_extra=env_extra,
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
        _manage("localstripe", "--port", str(port), "--state", "memory", "--webhook-url", ""),
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
