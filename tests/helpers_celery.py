"""Real Celery worker and beat processes for tests: start, wait on, stop.

Used by the heartbeat end-to-end tests (tests/usage/test_worker.py on the embedded default,
tests/integration/test_celery_heartbeat.py on PostgreSQL + Redis). The processes are the same
commands the Procfile runs, from this venv, pointed at the database this test process uses (pytest-
django's test database) and at the configured broker. Every wait is bounded; every process started is
stopped (TERM, then KILL) by its pid.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar
from urllib.parse import quote, urlsplit

from django.conf import settings
from django.db import connection

T = TypeVar("T")

BASE_DIR = Path(settings.BASE_DIR)
HEARTBEAT_TASK = "core.tasks.heartbeat_record"
STOP_TIMEOUT_SECONDS = 20


def database_url_of_this_process() -> str:
    """A DATABASE_URL for the database this process is connected to now (the test database, in a test)."""
    sd = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(sd['NAME']).resolve()}"
    if connection.vendor == "postgresql":
        credentials = quote(sd["USER"] or "", safe="")
        if sd.get("PASSWORD"):
            credentials += ":" + quote(sd["PASSWORD"], safe="")
        port = f":{sd['PORT']}" if sd.get("PORT") else ""
        return f"postgres://{credentials}@{sd.get('HOST') or ''}{port}/{quote(sd['NAME'], safe='')}"
    raise NotImplementedError(f"no DATABASE_URL for a {connection.vendor} test database")


def broker_scheme() -> str:
    return urlsplit(str(settings.CELERY_BROKER_URL)).scheme


def closed_loopback_port() -> int:
    """A loopback TCP port nothing listens on (bound, then released; nothing else binds in between)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def heartbeat_schedule_every_second() -> None:
    """Have beat send the heartbeat task every second, the way an operator would: a PeriodicTask row.

    The settings' entry (CELERY_BEAT_SCHEDULE, every 30 s) is left alone: beat rewrites that entry from
    the settings when it starts, so this is a second entry under its own name.
    """
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.update_or_create(
        name="heartbeat (test: every second)",
        defaults={"task": HEARTBEAT_TASK, "interval": every_second, "enabled": True},
    )


@dataclass
class CeleryProcess:
    name: str
    popen: subprocess.Popen
    log_path: Path
    _log: IO[bytes] = field(repr=False)
    killed: bool = False

    def log_tail(self, lines: int = 40) -> str:
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.name} (pid {self.popen.pid}, exit {self.popen.poll()}), {self.log_path}:\n" + "\n".join(
            text[-lines:]
        )

    def stop(self) -> None:
        """Warm shutdown (TERM: finish the current task), bounded; KILL if it does not exit in time."""
        try:
            if self.popen.poll() is None:
                self.popen.terminate()
                try:
                    self.popen.wait(timeout=STOP_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    self.killed = True
                    self.popen.kill()
                    self.popen.wait(timeout=10)
        finally:
            self._log.close()


@dataclass
class CeleryProcesses:
    processes: list[CeleryProcess]

    def logs(self) -> str:
        return "\n".join(p.log_tail() for p in self.processes)

    def assert_running(self) -> None:
        exited = [p for p in self.processes if p.popen.poll() is not None]
        assert not exited, f"{', '.join(p.name for p in exited)} exited early\n{self.logs()}"

    def wait_for(self, what: str, probe: Callable[[], T | None], *, timeout: float = 60.0) -> T:
        """Poll ``probe`` until it returns something truthy; fail with the processes' logs after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result:
                return result
            self.assert_running()
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout:.0f} s\n{self.logs()}")
            time.sleep(0.25)


def subprocess_environment(workdir: Path) -> dict[str, str]:
    """The environment for worker and beat: this test's settings, database and broker."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings_test",
        DATABASE_URL=database_url_of_this_process(),
        PYTHONUNBUFFERED="1",
        TIERLAB_LOG_EVERY_TASK="1",  # the tests follow the worker's task lines, frequent tasks' included
    )
    if broker_scheme() == "filesystem":
        # A broker folder of this test's own: no message left over from another run or test can reach
        # the worker, so a heartbeat can only come from the beat started here.
        env["CELERY_BROKER_DIR"] = str(workdir / "broker")
    return env


def _purge_shared_broker() -> None:
    # A network broker (Redis) is shared with the rest of the suite, whose tests may have queued
    # tasks; drop them so the worker only sees what this test's beat sends.
    from config.celery import app

    app.control.purge()


def _start(name: str, args: list[str], env: dict[str, str], workdir: Path) -> CeleryProcess:
    log_path = workdir / f"{name}.log"
    log = log_path.open("wb")
    # Same process group as pytest (no new session): if CI's timeout signals pytest's group, these
    # go with it. stdin closed: nothing here reads it.
    popen = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", *args],
        cwd=BASE_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return CeleryProcess(name=name, popen=popen, log_path=log_path, _log=log)


@contextlib.contextmanager
def celery_worker_and_beat(workdir: Path) -> Iterator[CeleryProcesses]:
    """Run ``celery worker`` and ``celery beat`` (DatabaseScheduler) for the duration of the block.

    Use with a ``transactional_db`` test: the processes read and write the test database through their
    own connections, so they only see committed rows, and must be stopped before the test's teardown
    flushes the tables. The block stops them.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    env = subprocess_environment(workdir)
    if broker_scheme() != "filesystem":
        _purge_shared_broker()
    processes: list[CeleryProcess] = []
    try:
        processes.append(
            _start(
                "worker",
                [
                    "worker",
                    "--loglevel",
                    "INFO",
                    "--pool",
                    "solo",  # one process: TERM and KILL reach everything it runs
                    "--hostname",
                    f"test-{uuid.uuid4().hex[:8]}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                env,
                workdir,
            )
        )
        processes.append(
            _start(
                "beat",
                ["beat", "--loglevel", "INFO", "--max-interval", "1", "--schedule", str(workdir / "beat-schedule")],
                env,
                workdir,
            )
        )
        yield CeleryProcesses(processes)
    finally:
        # Beat first, so it sends nothing to a worker that is going away.
        for process in reversed(processes):
            process.stop()
