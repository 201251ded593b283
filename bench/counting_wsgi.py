"""A WSGI wrapper that counts what the server did, for bench/api_overhead.py's ``--server procfile`` only:
what bench/gunicorn_hooks.py does with gunicorn's hooks, for a server that has none (granian, as the
Procfile runs it: worker processes of 16 threads each).

The app it wraps is ``$BENCH_COUNTED_APP`` (``module:attribute``; default ``config.wsgi:application``;
bench/profiled_wsgi.py or bench/whatif_wsgi.py for the profile and what-if servers). Inside each worker
process it counts, thread-safely (requests are served by many threads at once):

- responses by (run, status code): the run is the request's ``X-Bench-Run`` header (bench/api_overhead.py
  tags each run's requests with its label), or, untagged, the last 8 characters of its Authorization
  header;
- SQL statements executed while serving requests, by kind (read / write / other), through an execute
  wrapper on the connection of the thread that serves the request (Django's connections are per
  thread), and how many answered (2xx) requests executed at least one write (``requests_with_write``;
  refused ones apart, in ``refused_with_write``, as in bench/gunicorn_hooks.py); per tagged run too
  (``sql_runs``: run -> kind -> count, with ``responses``), so the bench can tell a warm run (no SQL
  read) from a cold one in each worker.

A tagged request's response carries ``X-Bench-Worker: <pid>``: the worker that served it, so the bench's
cache warm-up can see that every worker has served every key (granian keeps a connection on one worker).

A request is counted when the server closes its response (after the body is sent), as gunicorn's
``post_request`` hook does. Once the wrapped app is imported the worker writes
``$BENCH_STATS_DIR/ready-<pid>`` (so the bench knows every worker is up, not just the first), and when
it exits ``$BENCH_STATS_DIR/worker-<pid>.json``, in the format of bench/gunicorn_hooks.py (with the
profile, if bench/profiled_wsgi.py is the wrapped app). granian's workers are ``multiprocessing``
children, which end with ``os._exit`` and so skip ``atexit``: the dump is a ``multiprocessing``
finalizer (run when such a child's target returns, after granian's graceful stop), and an ``atexit``
handler too for a server that runs the app in an ordinary process; it writes once.

The per-request cost (a closure for ``start_response``, a small response wrapper, a lock taken once per
request and once per SQL statement) is the same in all three configurations.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import sys
import threading
from collections import Counter
from multiprocessing import util as multiprocessing_util

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
_lock = threading.Lock()
_responses: Counter = Counter()
_sql: Counter = Counter()
_sql_runs: dict[str, Counter] = {}
_local = threading.local()  # .request: the _Request this thread is serving
_dumped: list[str] = []


def _load(target: str):
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute or "application")


_app = _load(os.environ.get("BENCH_COUNTED_APP") or "config.wsgi:application")


class _Request:
    __slots__ = ("key", "status", "tagged", "writes")

    def __init__(self, key: str, tagged: bool) -> None:
        self.key = key
        self.status = 0
        self.writes = 0
        self.tagged = tagged


def _count_sql(execute, sql, params, many, context):
    head = sql.lstrip()[:7].upper()
    kind = "read" if head.startswith("SELECT") else "write" if head.startswith(_WRITES) else "other"
    request = getattr(_local, "request", None)
    with _lock:
        _sql[kind] += 1
        if request is not None and request.tagged:
            _sql_runs.setdefault(request.key, Counter())[kind] += 1
    if kind == "write" and request is not None:
        request.writes += 1
    return execute(sql, params, many, context)


def _watch_this_threads_connections() -> None:
    from django.db import connections

    for alias in connections:  # this thread's connection objects (created on first use, kept by the thread)
        wrappers = connections[alias].execute_wrappers
        if _count_sql not in wrappers:
            wrappers.append(_count_sql)


def _record(request: _Request) -> None:
    with _lock:
        _responses[f"{request.key} {request.status}"] += 1
        if request.tagged:
            _sql_runs.setdefault(request.key, Counter())["responses"] += 1
        if request.writes:
            _sql["requests_with_write" if 200 <= request.status < 300 else "refused_with_write"] += 1


class _CountedResponse:
    """The app's response, counted when the server closes it; iterated as the app's own."""

    __slots__ = ("_request", "_response")

    def __init__(self, response, request: _Request) -> None:
        self._response = response
        self._request = request

    def __iter__(self):
        return iter(self._response)

    def close(self) -> None:
        try:
            close = getattr(self._response, "close", None)
            if close is not None:
                close()
        finally:
            _local.request = None
            _record(self._request)


def application(environ, start_response):
    if not getattr(_local, "watching", False):
        _watch_this_threads_connections()
        _local.watching = True
    run = environ.get("HTTP_X_BENCH_RUN")
    request = _Request(run or environ.get("HTTP_AUTHORIZATION", "")[-8:], bool(run))
    _local.request = request

    def counted_start_response(status, headers, exc_info=None):
        request.status = int(status.split(" ", 1)[0])
        if run:
            headers = [*headers, ("X-Bench-Worker", str(os.getpid()))]
        return start_response(status, headers, exc_info)

    return _CountedResponse(_app(environ, counted_start_response), request)


def dump() -> None:
    """Write this worker's counts (and profile) to $BENCH_STATS_DIR, once."""
    folder = os.environ.get("BENCH_STATS_DIR")
    if not folder or _dumped:
        return
    _dumped.append(folder)
    with _lock:
        payload = {
            "pid": os.getpid(),
            "responses": dict(_responses),
            "sql": dict(_sql),
            "sql_runs": {run: dict(counts) for run, counts in _sql_runs.items()},
        }
    mode = os.environ.get("BENCH_PROFILE", "")
    profiled_wsgi = sys.modules.get("bench.profiled_wsgi")
    if mode in ("cprofile", "timers") and profiled_wsgi is not None:
        suffix = "pstats" if mode == "cprofile" else "timers"
        payload["profile"] = profiled_wsgi.dump(os.path.join(folder, f"worker-{os.getpid()}.{suffix}"))
    path = os.path.join(folder, f"worker-{os.getpid()}.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(payload, handle)
    os.replace(path + ".tmp", path)  # whole or absent: the bench reads every worker-*.json


multiprocessing_util.Finalize(None, dump, exitpriority=100)
atexit.register(dump)
if os.environ.get("BENCH_STATS_DIR"):
    os.makedirs(os.environ["BENCH_STATS_DIR"], exist_ok=True)
    with open(os.path.join(os.environ["BENCH_STATS_DIR"], f"ready-{os.getpid()}"), "w") as handle:
        handle.write("ready\n")
