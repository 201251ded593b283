"""A real localstripe for tests: one process per test session, emptied before each test that uses it.

Loaded as a plugin by tests/conftest.py (``pytest_plugins = ["tests.stripe_fixtures"]``).

- ``localstripe_server`` (session): starts ``manage.py localstripe --port <free port> --state memory``
  (registering no webhook: a test server must never post to a developer's running site), waits a
  bounded time until it answers, yields its base URL, and stops it (TERM, then KILL) at the end.
- ``stripe_local`` (function): points settings.STRIPE_API_BASE at it and empties its data
  (``DELETE /_config/data``) first. Yields the base URL.
- ``stripe_webhooks_to`` (function): a callable registering a webhook URL for this test, e.g.
  ``stripe_webhooks_to(live_server.url)``; localstripe keeps registrations per process, so it is
  disabled again when the test ends.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 10
TEST_WEBHOOK_NAME = "pytest"
WEBHOOK_PATH = "/stripe/webhook/"


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def localstripe_request(base_url: str, method: str, path: str, body: dict | None = None, timeout: float = 5) -> bytes:
    """One request to localstripe (its /_config/ routes need no key; /v1/ ones get a test key)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base_url + path, data=data, method=method)  # noqa: S310 (http://127.0.0.1)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"sk_test_pytest:").decode())
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return response.read()


def start_localstripe(*, port: int, log_path: Path, extra_args: list[str] | None = None) -> subprocess.Popen:
    """``manage.py localstripe`` from this venv, waited on until it answers (bounded)."""
    command = [
        sys.executable,
        "manage.py",
        "localstripe",
        "--port",
        str(port),
        "--state",
        "memory",
        "--webhook-url=",
        *(extra_args or []),
    ]
    log = log_path.open("wb")
    process = subprocess.Popen(command, cwd=BASE_DIR, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    log.close()
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"localstripe exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            localstripe_request(base_url, "GET", "/v1/customers?limit=1", timeout=1)
            return process
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            if time.monotonic() > deadline:
                stop_process(process)
                raise RuntimeError(
                    f"localstripe did not answer on {base_url} within {STARTUP_TIMEOUT_SECONDS} s:\n"
                    f"{log_path.read_text()}"
                ) from None
            time.sleep(0.1)


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_SECONDS)


@pytest.fixture(scope="session")
def localstripe_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("localstripe") / "localstripe.log"
    port = free_loopback_port()
    process = start_localstripe(port=port, log_path=log_path)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


@pytest.fixture
def stripe_local(localstripe_server: str, settings) -> Iterator[str]:
    """The gateway talks to the session's localstripe, emptied for this test."""
    localstripe_request(localstripe_server, "DELETE", "/_config/data")
    settings.STRIPE_API_BASE = localstripe_server
    yield localstripe_server


@pytest.fixture
def stripe_webhooks_to(localstripe_server: str, settings) -> Iterator[Callable[..., str]]:
    """``stripe_webhooks_to(live_server.url)``: localstripe posts this test's events there (signed with
    STRIPE_WEBHOOK_SECRET, or ``secret=``). Returns the registered URL."""

    def register(url: str, *, secret: str | None = None) -> str:
        target = url if url.rstrip("/").endswith(WEBHOOK_PATH.rstrip("/")) else url.rstrip("/") + WEBHOOK_PATH
        localstripe_request(
            localstripe_server,
            "POST",
            f"/_config/webhooks/{TEST_WEBHOOK_NAME}",
            {"url": target, "secret": secret or settings.STRIPE_WEBHOOK_SECRET},
        )
        return target

    yield register
    # No unregister route: keep the registration but let it match no event type, so events still in
    # flight (delivered ~1 s after they happen) never reach the next test's server.
    with contextlib.suppress(OSError):
        localstripe_request(
            localstripe_server,
            "POST",
            f"/_config/webhooks/{TEST_WEBHOOK_NAME}",
            {"url": "http://127.0.0.1:9/", "secret": "whsec_disabled", "events": []},
        )
