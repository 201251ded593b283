"""`make run` stops cleanly on Ctrl-C (issue 16, finding 13).

Ctrl-C in a terminal sends SIGINT to the foreground process group: make and config/run.py (honcho), which
sends SIGTERM to each Procfile process's group and SIGKILL to whatever is left after its grace period.
The Celery worker's shutdown used to outlast honcho's 5 s and be killed every time. Here every process
of the tree (make, honcho, granian and its workers, the Celery worker and its pool, beat, localstripe)
must be gone within 10 s of SIGINT, none killed, and the pid files and
localstripe's published URL must have been under the run's own var/run/ and removed on the way out.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.make_run import BASE_DIR, MakeRun, embedded_default_environment

pytestmark = pytest.mark.make_run

STOP_WITHIN_SECONDS = 10
RUN_FILES = {"web.pid", "worker.pid", "beat.pid", "localstripe.url"}


def test_make_run_stops_on_sigint_within_10_s_and_kills_nothing(tmp_path):
    run = MakeRun(var_dir=tmp_path / "var")
    run.start()
    try:
        run.wait_ready()
        run_dir = run.var_dir / "run"
        assert {path.name for path in run_dir.iterdir()} >= RUN_FILES, sorted(run_dir.iterdir())
        assert (run_dir / "localstripe.url").read_text().strip() == f"http://127.0.0.1:{run.localstripe_port}"

        # A command in a second shell, not told LOCALSTRIPE_PORT, reaches the localstripe on its free port.
        second_shell = subprocess.run(
            [str(BASE_DIR / ".venv/bin/python"), "manage.py", "shell", "-c", REACH_STRIPE],
            cwd=BASE_DIR, env=embedded_default_environment(run.var_dir), capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
        assert second_shell.returncode == 0, second_shell.stderr
        assert second_shell.stdout.split()[-2:] == [f"http://127.0.0.1:{run.localstripe_port}", "200"]

        run.interrupt(wait_seconds=STOP_WITHIN_SECONDS + 5)

        log = run.log()
        timings = {f"{pid} {command}": round(seconds, 2) for pid, command in run.tree.items()
                   if (seconds := run.exit_seconds.get(pid)) is not None}  # fmt: skip
        print(f"{len(run.tree)} processes; seconds from SIGINT to exit:", *timings.items(), sep="\n  ")
        still_running = {pid: command for pid, command in run.tree.items() if pid not in run.exit_seconds}
        assert not still_running, f"still running {STOP_WITHIN_SECONDS + 5} s after SIGINT: {still_running}"
        slowest = max(run.exit_seconds.values())
        assert slowest <= STOP_WITHIN_SECONDS, f"the last process exited {slowest:.1f} s after SIGINT"
        assert "SIGKILL" not in log, log[-4000:]
        # honcho reports each process's status: killed would be -9, a crash a positive status.
        statuses = dict(re.findall(r"system\s*\| (\w+)\.1 stopped \(rc=(-?\d+)\)", log))
        assert set(statuses) == {"web", "worker", "beat", "stripe"}, log[-4000:]
        assert "-9" not in statuses.values(), statuses
        assert len(run.tree) >= 10, run.tree  # make, honcho and its 4 runners, 4 processes and their children
        # granian's main process kills the workers still running after --workers-kill-timeout: a worker that
        # exits on its own is gone before then.
        kill_timeout = int(re.search(r"--workers-kill-timeout (\d+)", (BASE_DIR / "Procfile").read_text())[1])
        granian = {pid for pid, command in run.tree.items() if "bin/granian" in command and "/bin/sh" not in command}
        granian_workers = {pid for pid, command in run.tree.items() if run.parents.get(pid) in granian}
        assert len(granian_workers) == 2, run.tree
        assert all(run.exit_seconds[pid] < kill_timeout for pid in granian_workers), timings
        # Everything cleaned up after itself: pid files, the published URL.
        assert not list(run_dir.iterdir()), sorted(run_dir.iterdir())
    finally:
        run.stop()


REACH_STRIPE = """
import urllib.request
from django.conf import settings
with urllib.request.urlopen(settings.STRIPE_API_BASE + "/js.stripe.com/v3/", timeout=10) as response:
    print(settings.STRIPE_API_BASE, response.status)
"""
