"""`make run` as a person runs it, for tests: on free ports, its state in a temp folder, stopped with SIGINT.

``MakeRun`` starts ``make run`` (setup: migrate, seed; then config/run.py: the banner and honcho with the
Procfile's web, worker, beat and localstripe) in a session of its own, with ``TIERLAB_VAR_DIR`` pointing
at a temp folder and the embedded default's environment (the variables that point the test suite at
PostgreSQL or Redis are removed, so it is the same `make run` on either CI run). ``wait_ready()`` waits,
bounded, until /healthz answers 200 and every process has started. ``interrupt()`` does what Ctrl-C in a
terminal does, SIGINT to the foreground process group, and records when each process of the tree exited.
Every process is stopped at the end: ``stop()`` sends SIGKILL to what is still left, by pid.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.stripe_fixtures import free_loopback_port

BASE_DIR = Path(__file__).resolve().parent.parent
READY_TIMEOUT_SECONDS = 300  # a fresh database is migrated first: a minute and more on a loaded machine
# Dropped from the environment `make run` gets: they point the test suite elsewhere (PostgreSQL, Redis,
# its own settings module and database) or would change what `make run` starts.
_DROPPED = re.compile(
    r"(DJANGO_SETTINGS_MODULE|DATABASE_URL|CELERY_.*|CACHE_URL|REDIS_URL|EMAIL_URL|STRIPE_.*|LOCALSTRIPE_PORT"
    r"|TIERLAB_.*|PORT|WEB_PORT|PYTEST_.*)"
)


def embedded_default_environment(var_dir: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not _DROPPED.fullmatch(name)}
    env["TIERLAB_VAR_DIR"] = str(var_dir)
    return env


def process_tree(root: int) -> dict[int, str]:
    """``root`` and all its descendants alive now, by pid, with their command lines (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if not is_alive(pid):
            continue
        with contextlib.suppress(OSError):
            tree[pid] = (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip())[:160]
        todo.extend(children.get(pid, []))
    return tree


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def is_alive(pid: int) -> bool:
    """A zombie has exited (its parent, often a container's init, may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class MakeRun:
    var_dir: Path
    web_port: int = field(default_factory=free_loopback_port)
    localstripe_port: int = field(default_factory=free_loopback_port)
    process: subprocess.Popen | None = None
    exit_seconds: dict[int, float] = field(default_factory=dict)
    tree: dict[int, str] = field(default_factory=dict)
    parents: dict[int, int] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.var_dir.parent / "make-run.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        env = embedded_default_environment(self.var_dir)
        env["LOCALSTRIPE_PORT"] = str(self.localstripe_port)
        with self.log_path.open("wb") as log:
            # -o: never reinstall requirements from a test (the venv is the one running this test).
            self.process = subprocess.Popen(
                ["make", "--no-print-directory", "-o", ".venv/.installed", "run", f"PORT={self.web_port}"],
                cwd=BASE_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as a terminal's foreground job
            )

    def wait_ready(self) -> None:
        """/healthz is 200, the worker is ready, and beat and localstripe have written their files."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        run_dir = self.var_dir / "run"
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"make run exited with {self.process.returncode}:\n{self.log()[-6000:]}")
            files = all((run_dir / name).exists() for name in ("beat.pid", "worker.pid", "localstripe.url"))
            if files and re.search(r"worker@\S+ ready", self.log()) and self.healthz() == 200:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"make run not ready in {READY_TIMEOUT_SECONDS} s:\n{self.log()[-6000:]}")
            time.sleep(0.5)

    def healthz(self) -> int | None:
        try:
            with urllib.request.urlopen(self.base_url + "/healthz", timeout=5) as response:  # noqa: S310 (loopback)
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (OSError, urllib.error.URLError):
            return None

    def interrupt(self, *, wait_seconds: float) -> None:
        """Ctrl-C: SIGINT to make's process group; records each process's exit time in ``exit_seconds``
        (pid -> seconds after the signal) for up to ``wait_seconds``."""
        assert self.process is not None
        self.tree = process_tree(self.process.pid)
        self.parents = {pid: parent_of(pid) for pid in self.tree}
        started = time.monotonic()
        os.killpg(self.process.pid, signal.SIGINT)
        while time.monotonic() - started < wait_seconds:
            self.process.poll()  # reaps make once it exits
            for pid in self.tree:
                if pid not in self.exit_seconds and not is_alive(pid):
                    self.exit_seconds[pid] = time.monotonic() - started
            if len(self.exit_seconds) == len(self.tree):
                return
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGKILL whatever of the tree is still alive (a failed test), by pid; then reap make."""
        if self.process is None:
            return
        for pid, command in {**process_tree(self.process.pid), **self.tree}.items():
            # Still alive and still the same command: a pid freed since may belong to someone else now.
            if is_alive(pid) and process_tree(pid).get(pid) == command:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
