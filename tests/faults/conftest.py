"""Fault injection (issue 12) with real processes: a private redis-server a test may freeze (SIGSTOP) and
wake (SIGCONT), a real gunicorn serving the app with the Procfile's settings, and child processes killed
with SIGKILL.

Every test here is marked ``faults``. They need redis-server (and the database the suite runs on: SQLite
in the embedded default, PostgreSQL in CI's integration run), so they run locally and in both of CI's
runs; without redis-server they are skipped, except in CI's integration run, where that is a failure.
The Redis here is always private, never the suite's shared one (REDIS_URL): freezing it must not stall
the rest of the suite. Every process started is stopped by its pid (SIGCONT first if frozen), bounded.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from accounts import services as account_services
from accounts.selectors import team_for_user
from tests.helpers_celery import BASE_DIR, subprocess_environment
from tests.usage.conftest import _redis_start
from tiers import services as tier_services
from tiers.models import Subscription, Tier

SMALL = "Llama-3.3-8B-Instruct"
STOP_TIMEOUT_SECONDS = 20


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(here):
            item.add_marker(pytest.mark.faults)


def _stop_process(process: subprocess.Popen, *, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


# --- a private Redis ----------------------------------------------------------------------------------


@dataclass
class PrivateRedis:
    process: subprocess.Popen
    port: int
    frozen: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def freeze(self) -> None:
        """SIGSTOP: Redis stops reading and answering; the kernel still accepts connections and buffers
        what clients send, which Redis runs when it wakes."""
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def wake(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)
        self.frozen = False

    @contextlib.contextmanager
    def frozen_for(self, seconds: float) -> Iterator[None]:
        self.freeze()
        try:
            yield
            time.sleep(seconds)
        finally:
            self.wake()

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=10)

    def commands_run(self, command: str) -> int:
        """How many times Redis has run ``command`` (INFO commandstats)."""
        stats = self.client().info("commandstats")
        return int(stats.get(f"cmdstat_{command.lower()}", {}).get("calls", 0))


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, on a free loopback port, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("TIERLAB_INTEGRATION") == "1":
            pytest.fail("TIERLAB_INTEGRATION=1 but redis-server is not installed: the fault tests need it")
        pytest.skip(
            "redis-server is not installed (apt-get install redis-server): fault injection needs a private Redis"
        )
    process, port = _redis_start(binary, tmp_path)
    server = PrivateRedis(process=process, port=port)
    try:
        yield server
    finally:
        if server.frozen:
            server.wake()
        _stop_process(process)


# --- an account ----------------------------------------------------------------------------------------


@pytest.fixture
def fault_account(transactional_db, catalog) -> tuple:
    """A team on a tier with no limits (a burst must not be refused by them), with a model-API key.
    ``transactional_db``: the servers started here read the committed rows through their own connections."""
    tier = Tier.objects.create(slug="faults", name="Faults", is_paid=False, price_cents=0)
    tier.allowed_models.set(Tier.objects.get(slug="free").allowed_models.all())
    user = tier_services.user_create(email="faults@example.com")
    team = team_for_user(user=user)
    Subscription.objects.filter(team=team).update(tier=tier)
    _, secret = account_services.api_key_create(team=team, name="faults")
    return team, secret


# --- a real gunicorn --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_environment(workdir: Path, *, backend: str, redis_url: str = "") -> dict[str, str]:
    """The environment of a process serving (or running) the app against this test's database."""
    env = subprocess_environment(workdir)
    env.update(
        TIERLAB_QUOTA_BACKEND=backend,
        CACHE_URL="locmemcache://",  # the suite's shared Redis (CI) must not be involved
        LOG_LEVEL="WARNING",
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


@dataclass
class AppServer:
    process: subprocess.Popen
    port: int
    log: Path

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


def http_request(
    port: int, method: str, path: str, *, secret: str, body: dict | None = None, request_id: str | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """One request on a new connection: (status, headers with lower-case names, the whole body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    try:
        connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.fixture
def serve_app(tmp_path: Path) -> Iterator[Callable[..., AppServer]]:
    """Start gunicorn as the Procfile does (2 workers, 4 threads each) against this test's database; the
    fixture stops every server it started."""
    servers: list[AppServer] = []

    def start(*, backend: str, secret: str, redis_url: str = "") -> AppServer:
        workdir = tmp_path / f"gunicorn-{len(servers)}"
        workdir.mkdir()
        port = _free_port()
        log = workdir / "gunicorn.log"
        with log.open("ab") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
                 "--workers", "2", "--threads", "4", "--graceful-timeout", "5", "--log-level", "warning"],
                cwd=BASE_DIR, env=app_environment(workdir, backend=backend, redis_url=redis_url),
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip
        server = AppServer(process=process, port=port, log=log)
        servers.append(server)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"gunicorn exited ({process.returncode}):\n{server.log_tail()}")
            with contextlib.suppress(OSError):
                if http_request(port, "GET", "/v1/models", secret=secret, timeout=5)[0] == 200:
                    return server
            time.sleep(0.2)
        pytest.fail(f"gunicorn did not answer within 90 s:\n{server.log_tail()}")

    try:
        yield start
    finally:
        for server in servers:
            _stop_process(server.process)
