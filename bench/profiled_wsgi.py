"""``config.wsgi.application`` instrumented, for bench/api_overhead.py's profile runs only.

``BENCH_PROFILE=cprofile``: everything Django does for a request under cProfile, including iterating
and closing the response (where ``request_finished`` runs); gunicorn's own HTTP parsing and socket
work is outside. cProfile's per-call cost inflates Python-heavy code, so its numbers are shares.

``BENCH_PROFILE=timers``: no profiler; the steps of the request path are wrapped with two clocks
(wall: ``perf_counter``, CPU of this thread: ``thread_time``), about a microsecond per wrapped call.
Wall minus CPU is time spent waiting: a Redis or database round trip, a lock, or the CPU taken by
another process (on 2 cores, wrk and the other worker).

The first ``BENCH_PROFILE_SKIP`` requests of each worker (default 300: the probe and the warm-up,
which pay one-off imports and cache fills) are not measured. bench/gunicorn_hooks.py (gunicorn) or
bench/counting_wsgi.py (the Procfile's granian) calls :func:`dump` when the worker exits.

Thread-safe, for servers that run many requests at once in one worker (granian's blocking threads):
each thread has its own profiler and timers (cProfile watches only the thread that enabled it), and
:func:`dump` merges them. With threads, a step's wall time also holds the time it waited for the GIL.
"""

from __future__ import annotations

import cProfile
import functools
import itertools
import json
import os
import pstats
import threading
import time

from config.wsgi import application as _django_application

MODE = os.environ.get("BENCH_PROFILE", "cprofile")
SKIP = int(os.environ.get("BENCH_PROFILE_SKIP", "300"))
_WHOLE = "whole app (Django, incl. response close)"
_seen = itertools.count(1)  # requests this worker has started: next() is atomic under the GIL
_local = threading.local()  # .state: this thread's _ThreadState
_lock = threading.Lock()
_THREADS: list[_ThreadState] = []  # every serving thread's state, merged by dump()
_TIMER_NAMES: list[str] = [_WHOLE]


class _ThreadState:
    def __init__(self) -> None:
        self.on = False
        self.measured = 0
        self.profile = cProfile.Profile() if MODE == "cprofile" else None
        self.timers: dict[str, list[float]] = {name: [0, 0.0, 0.0] for name in _TIMER_NAMES}


def _mine() -> _ThreadState:
    state = getattr(_local, "state", None)
    if state is None:
        state = _local.state = _ThreadState()
        with _lock:
            _THREADS.append(state)
    return state


def _timed(name: str, function):
    _TIMER_NAMES.append(name)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        state = getattr(_local, "state", None)
        if state is None or not state.on:
            return function(*args, **kwargs)
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            entry = state.timers[name]
            entry[0] += 1
            entry[1] += time.perf_counter() - wall
            entry[2] += time.thread_time() - cpu

    return wrapper


def _install_timers() -> None:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.utils import CursorWrapper
    from redis.commands.core import Script

    from bench import baseline_urls
    from usage import metering, model_api
    from usage.quotas import database
    from usage.quotas import redis as quota_redis

    # A name that is gone fails the run here, loudly: a renamed step must be renamed here too.
    targets = [
        ("view: model_api._chat", model_api, "_chat"),
        ("baseline view: baseline_urls._chat_baseline", baseline_urls, "_chat_baseline"),
        ("key check: metering.caller_authenticate", metering, "caller_authenticate"),
        ("parsing: model_api._chat_request", model_api, "_chat_request"),
        ("quota + record: metering.admit_and_record", metering, "admit_and_record"),
        ("RedisQuotaBackend.consume", quota_redis.RedisQuotaBackend, "consume"),
        ("DatabaseQuotaBackend.consume", database.DatabaseQuotaBackend, "consume"),
        ("DatabaseQuotaBackend.reserve", database.DatabaseQuotaBackend, "reserve"),
        ("DatabaseQuotaBackend.settle", database.DatabaseQuotaBackend, "settle"),
        ("usage_record_insert", database, "usage_record_insert"),
        ("simulated model: model_api.complete", model_api, "complete"),
        ("headers: metering.headers_after", metering, "headers_after"),
        ("JSON body: model_api._json_response", model_api, "_json_response"),
        ("redis Script call (EVALSHA round trip)", Script, "__call__"),
        ("SQL CursorWrapper.execute", CursorWrapper, "execute"),
        ("DB connect", BaseDatabaseWrapper, "connect"),
        ("DB commit", BaseDatabaseWrapper, "commit"),
    ]
    for name, owner, attribute in targets:
        if not hasattr(owner, attribute):
            raise AttributeError(f"bench/profiled_wsgi.py times {owner.__name__}.{attribute}, which is gone")
        setattr(owner, attribute, _timed(name, getattr(owner, attribute)))


if MODE == "timers":
    _install_timers()


def _start(state: _ThreadState) -> tuple[float, float]:
    state.on = True
    if MODE == "cprofile":
        state.profile.enable()  # no clocks of our own: they would show up in the profile
        return (0.0, 0.0)
    return time.perf_counter(), time.thread_time()


def _stop(state: _ThreadState, started: tuple[float, float]) -> None:
    if MODE == "cprofile":
        state.profile.disable()
    else:
        whole = state.timers[_WHOLE]
        whole[1] += time.perf_counter() - started[0]
        whole[2] += time.thread_time() - started[1]
    state.on = False


class _InstrumentedResponse:
    """The response; its iteration and close are measured if its request was (on the serving thread)."""

    def __init__(self, response, measured: bool):
        self._response = response
        self._measured = measured

    def __iter__(self):
        if not self._measured:
            return iter(self._response)
        state = _mine()
        started = _start(state)
        try:
            chunks = list(self._response)
        finally:
            _stop(state, started)
        return iter(chunks)

    def close(self):
        close = getattr(self._response, "close", None)
        if close is None:
            return
        if not self._measured:
            close()
            return
        state = _mine()
        started = _start(state)
        try:
            close()
        finally:
            _stop(state, started)


def application(environ, start_response):
    if next(_seen) <= SKIP:
        return _InstrumentedResponse(_django_application(environ, start_response), False)
    state = _mine()
    state.measured += 1
    state.timers[_WHOLE][0] += 1
    started = _start(state)
    try:
        response = _django_application(environ, start_response)
    finally:
        _stop(state, started)
    return _InstrumentedResponse(response, True)


def dump(path: str) -> dict:
    """Write the worker's profile (every thread's, merged) to ``path``; returns what bench reads."""
    with _lock:
        threads = list(_THREADS)
    measured = sum(state.measured for state in threads)
    if MODE == "cprofile":
        profiles = [state.profile for state in threads if state.measured]
        if profiles:
            stats = pstats.Stats(profiles[0])
            for profile in profiles[1:]:
                stats.add(profile)
            stats.dump_stats(path)
        else:  # nothing measured: an empty profile (bench/api_overhead.py skips it)
            cProfile.Profile().dump_stats(path)
    else:
        timers: dict[str, list[float]] = {name: [0, 0.0, 0.0] for name in _TIMER_NAMES}
        for state in threads:
            for name, (calls, wall, cpu) in state.timers.items():
                entry = timers[name]
                entry[0] += calls
                entry[1] += wall
                entry[2] += cpu
        with open(path, "w") as handle:
            json.dump(timers, handle)
    return {"path": path, "requests": measured, "mode": MODE, "threads": len(threads)}
