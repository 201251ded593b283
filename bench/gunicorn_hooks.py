"""Gunicorn config (``-c bench/gunicorn_hooks.py``) used only by bench/api_overhead.py, for every server it
starts (baseline and metered alike, so the hooks cost the same in each).

Counts, inside each worker, what the server actually did, so the benchmark can check correctness
against the server's own numbers instead of the load generator's (wrk abandons the requests in flight
when its time is up, so its count can be a few lower than what the server admitted):

- responses by (last 8 characters of the Authorization header, status code): keys are per run;
- SQL statements executed while serving requests, by kind (read / write / other), and how many
  answered (2xx) requests executed at least one write: "no SQL write on the request path" is checked,
  not assumed. Refused requests are counted apart (``refused_with_write``): a refusal may flush the
  process's buffered refusal statistics (usage/refusals.py), which is a SQL write by design.

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
_request = {"writes": 0}
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def _count_sql(execute, sql, params, many, context):
    head = sql.lstrip()[:7].upper()
    if head.startswith("SELECT"):
        _sql["read"] += 1
    elif head.startswith(_WRITES):
        _sql["write"] += 1
        _request["writes"] += 1
    else:
        _sql["other"] += 1  # BEGIN, SAVEPOINT, ...
    return execute(sql, params, many, context)


def post_worker_init(worker):
    # The sync worker serves requests on this (main) thread, whose connection object this is.
    from django.db import connections

    for alias in connections:
        connections[alias].execute_wrappers.append(_count_sql)


def pre_request(worker, req):
    _request["writes"] = 0


def post_request(worker, req, environ, resp):
    key = (environ or {}).get("HTTP_AUTHORIZATION", "")[-8:]
    status = getattr(resp, "status_code", None) or 0
    _responses[f"{key} {status}"] += 1
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
    payload = {"pid": os.getpid(), "responses": dict(_responses), "sql": dict(_sql)}
    mode = os.environ.get("BENCH_PROFILE", "")
    profiled_wsgi = sys.modules.get("bench.profiled_wsgi")  # absent if the worker failed to boot
    if mode in ("cprofile", "timers") and profiled_wsgi is not None:
        suffix = "pstats" if mode == "cprofile" else "timers"
        payload["profile"] = profiled_wsgi.dump(os.path.join(folder, f"worker-{os.getpid()}.{suffix}"))
    with open(os.path.join(folder, f"worker-{os.getpid()}.json"), "w") as handle:
        json.dump(payload, handle)
