"""``config.wsgi.application`` instrumented, for bench/api_overhead.py's profile runs only.

``BENCH_PROFILE=cprofile``: everything Django does for a request under cProfile, including iterating
and closing the response (where ``request_finished`` runs); gunicorn's own HTTP parsing and socket
work is outside. cProfile's per-call cost inflates Python-heavy code, so its numbers are shares.

``BENCH_PROFILE=timers``: no profiler; the steps of the request path are wrapped with two clocks
(wall: ``perf_counter``, CPU of this thread: ``thread_time``), about a microsecond per wrapped call.
Wall minus CPU is time spent waiting: a Redis or database round trip, a lock, or the CPU taken by
another process (on 2 cores, wrk and the other worker).

The first ``BENCH_PROFILE_SKIP`` requests of each worker (default 300: the probe and the warm-up,
which pay one-off imports and cache fills) are not measured. bench/gunicorn_hooks.py calls
:func:`dump` when the worker exits.
"""

from __future__ import annotations

import cProfile
import functools
import json
import os
import time

from config.wsgi import application as _django_application

MODE = os.environ.get("BENCH_PROFILE", "cprofile")
SKIP = int(os.environ.get("BENCH_PROFILE_SKIP", "300"))
PROFILE = cProfile.Profile()
_state = {"seen": 0, "measured": 0}
TIMERS: dict[str, list[float]] = {}  # name -> [calls, wall seconds, cpu seconds]


def _timed(name: str, function):
    TIMERS.setdefault(name, [0, 0.0, 0.0])

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if not _state["on"]:
            return function(*args, **kwargs)
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            entry = TIMERS[name]
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


_state["on"] = False
if MODE == "timers":
    _install_timers()
_app_timer = [0, 0.0, 0.0]
TIMERS["whole app (Django, incl. response close)"] = _app_timer


def _start() -> tuple[float, float] | None:
    _state["seen"] += 1
    return _start_again()


def _start_again() -> tuple[float, float] | None:
    """Measure from here if this request is past the skipped ones (its response too, once it was)."""
    if _state["seen"] <= SKIP:
        return None
    _state["on"] = True
    if MODE == "cprofile":
        PROFILE.enable()  # no clocks of our own: they would show up in the profile
        return (0.0, 0.0)
    return time.perf_counter(), time.thread_time()


def _stop(started: tuple[float, float] | None) -> None:
    if started is None:
        return
    if MODE == "cprofile":
        PROFILE.disable()
    else:
        _app_timer[1] += time.perf_counter() - started[0]
        _app_timer[2] += time.thread_time() - started[1]
    _state["on"] = False


class _InstrumentedResponse:
    def __init__(self, response):
        self._response = response

    def __iter__(self):
        started = _start_again()
        try:
            chunks = list(self._response)
        finally:
            _stop(started)
        return iter(chunks)

    def close(self):
        close = getattr(self._response, "close", None)
        if close is None:
            return
        started = _start_again()
        try:
            close()
        finally:
            _stop(started)


def application(environ, start_response):
    started = _start()
    if started is not None:
        _state["measured"] += 1
        _app_timer[0] += 1
    try:
        response = _django_application(environ, start_response)
    finally:
        _stop(started)
    return _InstrumentedResponse(response)


def dump(path: str) -> dict:
    if MODE == "cprofile":
        PROFILE.dump_stats(path)
    else:
        with open(path, "w") as handle:
            json.dump(TIMERS, handle)
    return {"path": path, "requests": _state["measured"], "mode": MODE}
