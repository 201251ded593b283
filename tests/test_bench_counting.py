"""bench/counting_wsgi.py under the Procfile's own server (bench/api_overhead.py ``--server procfile``):
many threads per worker serve requests at once, and what every worker counted (responses by key and
status, SQL reads and writes per request) adds up exactly to what was sent, written by each worker
when the server stops gracefully (granian's workers are multiprocessing children, which skip atexit)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench._procfile import web_app, web_command, web_workers
from tests.stripe_fixtures import free_loopback_port

ROOT = Path(__file__).resolve().parent.parent


def _request(port: int, path: str, key: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _tagged_requests(port: int, path: str, run: str, count: int) -> list[tuple[int, str | None]]:
    """``count`` requests tagged ``X-Bench-Run: <run>`` on one keep-alive connection: (status, the
    X-Bench-Worker header) each."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    answers = []
    try:
        for _ in range(count):
            conn.request("GET", path, headers={"Authorization": "Bearer untagged", "X-Bench-Run": run})
            response = conn.getresponse()
            response.read()
            answers.append((response.status, response.getheader("X-Bench-Worker")))
    finally:
        conn.close()
    return answers


def test_web_command_serves_another_app_on_the_given_port():
    command = web_command(port=4321, venv_bin=Path("/venv/bin"), app="bench.counting_wsgi:application")
    assert command[:2] == ["/bin/sh", "-c"]
    line = command[2]
    assert "--port 4321" in line and "${WEB_PORT}" not in line
    assert "bench.counting_wsgi:application" in line and web_app() not in line
    assert ".venv/bin/" not in line.replace("/venv/bin/", "")


def test_counts_of_every_worker_add_up_under_concurrent_threads(tmp_path):
    database = tmp_path / "counted.sqlite3"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE bench_counted (x integer)")
    stats = tmp_path / "stats"
    (tmp_path / "var" / "run").mkdir(parents=True)
    port = free_loopback_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIERLAB_", "BENCH_", "DJANGO_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=f"sqlite:///{database}",
        CACHE_URL="locmemcache://",
        CELERY_BROKER_DIR=str(tmp_path / "celery"),
        TIERLAB_VAR_DIR=str(tmp_path / "var"),
        BENCH_STATS_DIR=str(stats),
        BENCH_COUNTED_APP="tests.bench_counted_app:application",
    )
    log = open(tmp_path / "server.out", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        web_command(port=port, venv_bin=Path(sys.executable).parent, app="bench.counting_wsgi:application"),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    probes = 0
    try:
        deadline = time.monotonic() + 60
        while len(list(stats.glob("ready-*"))) < web_workers() or not probes:
            assert server.poll() is None, (tmp_path / "server.out").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server was not up within 60 s"
            try:
                _request(port, "/probe", "probe000")
                probes += 1
            except OSError:
                time.sleep(0.2)
        sent = [("/read", "key-read")] * 120 + [("/write", "keywrite")] * 60 + [("/write/refused", "key-refu")] * 20
        with ThreadPoolExecutor(max_workers=24) as pool:
            statuses = list(pool.map(lambda item: _request(port, *item), sent))
            # bench/api_overhead.py's runs: requests tagged X-Bench-Run, counted per run whatever their key,
            # answered with the pid of the worker that served them (the same for a keep-alive connection).
            tagged = list(pool.map(lambda n: _tagged_requests(port, "/read", "run-1", 5), range(6)))
            tagged += list(pool.map(lambda n: _tagged_requests(port, "/write", "run-2", 5), range(2)))
        assert Counter(statuses) == {200: 180, 429: 20}
        assert all(status == 200 for answers in tagged for status, _ in answers)
        for answers in tagged:
            assert len({pid for _, pid in answers}) == 1  # granian keeps a connection on one worker
    finally:
        os.kill(server.pid, signal.SIGTERM)  # granian stops its workers gracefully; each writes its counts
        try:
            server.wait(timeout=30)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
            log.close()
    ready = sorted(path.name.removeprefix("ready-") for path in stats.glob("ready-*"))
    dumps = [json.loads(path.read_text()) for path in sorted(stats.glob("worker-*.json"))]
    assert sorted(str(d["pid"]) for d in dumps) == ready  # every worker wrote its counts at exit
    assert len(ready) == web_workers()
    responses: Counter = Counter()
    sql: Counter = Counter()
    for dump in dumps:
        responses.update(dump["responses"])
        sql.update(dump["sql"])
    assert responses == {
        "key-read 200": 120,
        "keywrite 200": 60,
        "key-refu 429": 20,
        "probe000 200": probes,
        "run-1 200": 30,
        "run-2 200": 10,
    }
    assert sql["read"] == 200 + probes + 40
    assert sql["write"] == 80 + 10
    assert sql["requests_with_write"] == 60 + 10
    # Per run and per worker: each connection's answers came from the worker its header named.
    runs: dict[str, Counter] = {}
    for dump in dumps:
        for run, counts in dump["sql_runs"].items():
            runs.setdefault(run, Counter()).update(counts)
    assert runs == {"run-1": {"responses": 30, "read": 30}, "run-2": {"responses": 10, "read": 10, "write": 10}}
    by_worker = Counter(pid for answers in tagged[:6] for _, pid in answers)
    assert by_worker == {str(d["pid"]): d["sql_runs"]["run-1"]["responses"] for d in dumps if "run-1" in d["sql_runs"]}
    assert sql["refused_with_write"] == 20
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM bench_counted").fetchone() == (90,)
