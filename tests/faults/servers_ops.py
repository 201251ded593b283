"""Real servers for the durability and failure tests: a private redis-server that can be stopped and
started again from its own files, and gunicorn serving the project.

Everything binds 127.0.0.1 on a free port, every wait is bounded, and every process started here is
stopped by its pid (TERM, then KILL) by the context manager or fixture that started it.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings

BASE_DIR = Path(settings.BASE_DIR)
STOP_TIMEOUT_SECONDS = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(popen: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if popen.poll() is None:
        popen.send_signal(sig)
        try:
            popen.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=10)


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("TIERLAB_INTEGRATION") == "1":
            pytest.fail("redis-server is not installed, and the integration run needs it")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return binary


# AOF with fsync every second: what production requires (core/redis_persistence.py) and .ci/run runs.
AOF_EVERYSEC = ("--appendonly", "yes", "--appendfsync", "everysec")
NO_PERSISTENCE = ("--appendonly", "no")


@dataclass
class RedisServer:
    """A private redis-server: ``directory`` holds its files (the AOF), ``port`` stays the same across
    ``stop()`` and ``start()``, so clients reconnect to a server restarted from its own files."""

    directory: Path
    args: tuple[str, ...]
    port: int = field(default_factory=free_port)
    popen: subprocess.Popen | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        assert self.popen is None or self.popen.poll() is not None, "already running"
        self.starts += 1
        log = self.directory / "redis.log"
        self.popen = subprocess.Popen(
            [redis_binary(), "--bind", "127.0.0.1", "--port", str(self.port), "--protected-mode", "yes",
             "--dir", str(self.directory), "--save", "", "--daemonize", "no", "--logfile", str(log),
             "--maxmemory-policy", "noeviction", *self.args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30  # loading a large AOF takes a while
        while time.monotonic() < deadline and self.popen.poll() is None:
            if self.answers():
                return
            time.sleep(0.05)
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"redis-server did not answer on 127.0.0.1:{self.port} (start {self.starts}):\n{tail}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop with ``sig`` (SIGTERM: Redis flushes its AOF and exits; SIGKILL: at once)."""
        if self.popen is not None:
            _stop(self.popen, sig)


@contextlib.contextmanager
def redis_server(directory: Path, *args: str) -> Iterator[RedisServer]:
    directory.mkdir(parents=True, exist_ok=True)
    server = RedisServer(directory=directory, args=args)
    try:
        server.start()
    except RuntimeError:  # the free port was taken in between: once more on another
        server.port = free_port()
        server.start()
    try:
        yield server
    finally:
        server.stop()


# --- gunicorn ---------------------------------------------------------------------------------------------


@dataclass
class Gunicorn:
    popen: subprocess.Popen
    port: int
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        return f"--- gunicorn (exit {self.popen.poll()}), {self.log_path}:\n" + "\n".join(text[-lines:])


def _http_status(port: int, path: str) -> int | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return None


@contextlib.contextmanager
def gunicorn(
    env: dict[str, str],
    workdir: Path,
    *,
    workers: int = 2,
    ready_path: str = "/pricing/",
    ready_status: int | None = 200,
) -> Iterator[Gunicorn]:
    """``gunicorn config.wsgi:application`` (sync workers, as in production) with ``env``, until it
    answers ``ready_path`` with ``ready_status`` (None: any answer); stopped with TERM (then KILL) when
    the block ends."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "gunicorn.log"
    port = free_port()
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
             "--workers", str(workers), "--worker-class", "sync", "--timeout", "60", "--graceful-timeout", "5",
             "--backlog", "2048"],
            cwd=BASE_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = Gunicorn(popen=popen, port=port, log_path=log_path)
    try:
        deadline = time.monotonic() + 90
        while (status := _http_status(port, ready_path)) is None or ready_status not in (None, status):
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not serve {ready_path}\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
    finally:
        _stop(popen)


# --- a Celery worker on a broker folder of its own ------------------------------------------------------------


def filesystem_broker_env(env: dict[str, str], broker_dir: Path) -> dict[str, str]:
    """``env`` with the embedded broker (core.broker's filesystem transport) in ``broker_dir``, whatever
    broker the suite runs with (CI's second run uses Redis)."""
    return {**env, "CELERY_BROKER_URL": "filesystem://", "CELERY_BROKER_DIR": str(broker_dir)}


def filesystem_broker_app(broker_dir: Path):
    """A Celery app of its own (the project's is never reconfigured) that publishes into ``broker_dir``
    as the project's web server and beat do. The caller must unset CELERY_BROKER_URL in the
    environment: Celery prefers it over an app's broker_url."""
    from celery import Celery

    app = Celery(f"broker-{broker_dir.name}", set_as_current=False)
    app.conf.update(
        broker_url="filesystem://",
        broker_transport="core.broker:Transport",
        broker_transport_options={
            "data_folder_in": str(broker_dir / "queue"),
            "data_folder_out": str(broker_dir / "queue"),
            "control_folder": str(broker_dir / "control"),
            "processed_folder": str(broker_dir / "processed"),
            "corrupt_folder": str(broker_dir / "corrupt"),
            "store_processed": False,
        },
        broker_connection_retry_on_startup=False,
    )
    for name in ("queue", "control", "processed"):
        (broker_dir / name).mkdir(parents=True, exist_ok=True)
    return app


@contextlib.contextmanager
def celery_worker(env: dict[str, str], workdir: Path):
    """``celery worker`` (solo pool, as tests/helpers_celery.py starts it) with ``env``; yields a
    helpers_celery.CeleryProcesses of one, stopped (TERM, then KILL) when the block ends."""
    from tests.helpers_celery import CeleryProcess, CeleryProcesses

    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "worker.log"
    log = log_path.open("wb")
    popen = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO", "--pool", "solo",
         "--hostname", f"ops-{os.getpid()}-{time.monotonic_ns()}@%h", "--without-gossip", "--without-mingle",
         "--without-heartbeat"],
        cwd=BASE_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    worker = CeleryProcess(name="worker", popen=popen, log_path=log_path, _log=log)
    processes = CeleryProcesses([worker])
    try:
        processes.wait_for("worker ready", lambda: b" ready." in log_path.read_bytes(), timeout=90)
        yield processes
    finally:
        worker.stop()


# --- a small file system of its own ---------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``mount_point`` for the block (root only: skipped elsewhere)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount_point.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30, check=False)
        if os.path.ismount(mount_point):
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30, check=False)
