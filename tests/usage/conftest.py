from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _redis_start(binary: str, directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    log = directory / "redis.log"
    for _ in range(3):  # the free port may be taken between choosing it and binding it
        port = _free_port()
        process = subprocess.Popen(
            # No persistence, loopback only: a throw-away server for this test session.
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--protected-mode", "yes", "--dir", str(directory),
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            if _redis_answers(port):
                return process, port
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
    tail = log.read_text()[-2000:] if log.exists() else "(no log)"
    pytest.fail(f"redis-server did not start on 127.0.0.1:\n{tail}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a Redis the tests may write to, under key prefixes of their own (nothing is flushed).

    In CI's integration run (TIERLAB_INTEGRATION=1) that is the server REDIS_URL names; otherwise a
    private ``redis-server`` on a free loopback port, started for the session. Without the binary the
    Redis tests are skipped, except in the integration run, where a missing Redis is a failure.
    """
    integration = os.environ.get("TIERLAB_INTEGRATION") == "1"
    if integration and os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    binary = shutil.which("redis-server")
    if binary is None:
        if integration:
            pytest.fail("TIERLAB_INTEGRATION=1 but REDIS_URL is not set and redis-server is not installed")
        pytest.skip("redis-server is not installed (apt-get install redis-server): Redis quota backend untested")
    process, port = _redis_start(binary, tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
