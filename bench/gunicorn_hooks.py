"""Gunicorn config (``-c bench/gunicorn_hooks.py``) used only by bench/api_overhead.py, for every server it
starts (baseline and metered alike, so the hooks cost the same in each).

Counts, inside each worker, what the server actually did, so the benchmark can check correctness
against the server's own numbers instead of the load generator's (wrk abandons the requests in flight
when its time is up, so its count can be a few lower than what the server admitted):

- responses by (run, status code): the run is the request's ``X-Bench-Run`` header (bench/api_overhead.py
  tags each run's requests with its label), or, untagged, the last 8 characters of its Authorization
  header; a tagged request's response carries ``X-Bench-Worker: <pid>`` (the app is wrapped in
  ``post_worker_init``), as bench/counting_wsgi.py does;
- SQL statements executed while serving requests, by kind (read / write / other), and how many
  answered (2xx) requests executed at least one write: "no SQL write on the request path" is checked,
  not assumed. Refused requests are counted apart (``refused_with_write``): a refusal may flush the
  process's buffered refusal statistics (usage/refusals.py), which is a SQL write by design. Per tagged
  run too (``sql_runs``: run -> kind -> count, with ``responses``).

Each worker writes its counts to ``$BENCH_STATS_DIR/worker-<pid>.json`` when it exits. With
``BENCH_PROFILE=cprofile`` or ``timers`` the WSGI app is ``bench.profiled_wsgi:application`` and the
worker also dumps its cProfile stats (``.pstats``) or step timers (``.timers``) there. The per-request
cost of these hooks is a dict increment (plus one small call per SQL statement) and is the same in all
three configurations.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

_responses: Counter = Counter()
_sql: Counter = Counter()
_sql_runs: dict[str, Counter] = {}
_request = {"writes": 0, "run": ""}
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def _count_sql(execute, sql, params, many, context):
    head = sql.lstrip()[:7].upper()
    if head.startswith("SELECT"):
        kind = "read"
    elif head.startswith(_WRITES):
        kind = "write"
        _request["writes"] += 1
    else:
        kind = "other"  # BEGIN, SAVEPOINT, ...
    _sql[kind] += 1
    if _request["run"]:
        _sql_runs.setdefault(_request["run"], Counter())[kind] += 1
    return execute(sql, params, many, context)


def _echo_worker(app):
    """The app, with ``X-Bench-Worker: <pid>`` on the responses to tagged requests."""

    def application(environ, start_response):
        if not environ.get("HTTP_X_BENCH_RUN"):
            return app(environ, start_response)

        def tagged_start_response(status, headers, exc_info=None):
            return start_response(status, [*headers, ("X-Bench-Worker", str(os.getpid()))], exc_info)

        return app(environ, tagged_start_response)

    return application


def post_worker_init(worker):
    # The sync worker serves requests on this (main) thread, whose connection object this is.
    from django.db import connections

    for alias in connections:
        connections[alias].execute_wrappers.append(_count_sql)
    worker.wsgi = _echo_worker(worker.wsgi)  # loaded before this hook; the sync worker calls self.wsgi


def pre_request(worker, req):
    _request["writes"] = 0
    _request["run"] = next((value for name, value in req.headers if name == "X-BENCH-RUN"), "")


def post_request(worker, req, environ, resp):
    run = (environ or {}).get("HTTP_X_BENCH_RUN", "")
    key = run or (environ or {}).get("HTTP_AUTHORIZATION", "")[-8:]
    status = getattr(resp, "status_code", None) or 0
    _responses[f"{key} {status}"] += 1
    if run:
        _sql_runs.setdefault(run, Counter())["responses"] += 1
    _request["run"] = ""
    if _request["writes"]:
        _sql["requests_with_write" if 200 <= status < 300 else "refused_with_write"] += 1


def worker_exit(server, worker):
    # Gunicorn also calls this in the arbiter for a worker it could not signal: only the worker writes.
    if os.getpid() != worker.pid:
        return
    folder = os.environ.get("BENCH_STATS_DIR")
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    payload = {
        "pid": os.getpid(),
        "responses": dict(_responses),
        "sql": dict(_sql),
        "sql_runs": {run: dict(counts) for run, counts in _sql_runs.items()},
    }
    mode = os.environ.get("BENCH_PROFILE", "")
    profiled_wsgi = sys.modules.get("bench.profiled_wsgi")  # absent if the worker failed to boot
    if mode in ("cprofile", "timers") and profiled_wsgi is not None:
        suffix = "pstats" if mode == "cprofile" else "timers"
        payload["profile"] = profiled_wsgi.dump(os.path.join(folder, f"worker-{os.getpid()}.{suffix}"))
    with open(os.path.join(folder, f"worker-{os.getpid()}.json"), "w") as handle:
        json.dump(payload, handle)
