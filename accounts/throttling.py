"""Abuse protection of the account API (/api/v1/...): fixed-window request counters whose increment is
atomic, so N concurrent requests against a limit of L get exactly L answers, never more.

Billable quotas never come here (DESIGN.md): they are the model API's quota engine. DRF's own
throttles were not usable for this: they read, modify and write a cache entry (not atomic: 620
concurrent requests all passed a 600/min limit), and they keyed every API-key caller on one bucket
(``throttle_user_None``: the key's principal has no user id), so one team's traffic throttled all.

Buckets, each with a rate from ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` (DRF's "600/min" form):
- an API key's request counts for the key (``api_key``) and for its team (``team``);
- a session's request counts for the user (``user``) and for the team it acts for (``team``);
- an anonymous request counts for its client address (``anon``).
Every bucket of a request must have room; the first full one refuses it with 429
``rate_limit_exceeded`` and ``Retry-After`` (the seconds until that bucket's window ends). A refused
request still counts in the buckets checked before it: the counts are of attempts.

The counter, by the cache in use:
- a cache whose ``incr`` is atomic (Redis, Memcached, the in-process LocMemCache): ``cache.add(key, 0)``
  then ``cache.incr(key)``: Redis INCR, memcached incr, or an increment under LocMemCache's lock;
- any other cache, above all the embedded default (Django's DatabaseCache, whose ``incr`` is a get then
  a set): one ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` on ``ApiThrottleCounter``, atomic on
  SQLite and PostgreSQL. It costs a write per request, as DRF's throttle on that cache did.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from rest_framework import exceptions
from rest_framework.throttling import BaseThrottle

from accounts.models import ApiThrottleCounter
from accounts.selectors import AuthenticatedKey, team_for_request

# Cache backends whose incr is atomic (see the module docstring).
ATOMIC_INCR_CACHES = frozenset(
    {
        "django.core.cache.backends.redis.RedisCache",
        "django.core.cache.backends.locmem.LocMemCache",
        "django.core.cache.backends.memcached.PyMemcacheCache",
        "django.core.cache.backends.memcached.PyLibMCCache",
        "django_redis.cache.RedisCache",
    }
)


_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def rate_parse(rate: str) -> tuple[int, int]:
    """(requests, window seconds) of a DRF-style rate: "600/min", "60/m", "10/s", "1000/hour", "5/day"."""
    requests, period = rate.split("/")
    return int(requests), _PERIODS[period.strip()[0]]


def _cache_counter_hit(bucket: str, window: int, seconds: int) -> int:
    key = f"tierlab:throttle:{bucket}:{seconds}:{window}"
    for _ in range(2):
        cache.add(key, 0, timeout=seconds + 1)
        try:
            return cache.incr(key)
        except ValueError:  # expired between add and incr: add it again
            continue
    return cache.incr(key)


_UPSERT = (
    "INSERT INTO {table} (bucket, window_index, hits) VALUES (%s, %s, 1) "
    "ON CONFLICT (bucket) DO UPDATE SET "
    # Both expressions read the row as it was: a new window starts the count again at 1.
    "hits = CASE WHEN {table}.window_index = excluded.window_index THEN {table}.hits + 1 ELSE 1 END, "
    "window_index = excluded.window_index "
    "RETURNING hits"
)


def _database_counter_hit(bucket: str, window: int) -> int:
    table = connection.ops.quote_name(ApiThrottleCounter._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(_UPSERT.format(table=table), [bucket, window])
        return cursor.fetchone()[0]


def throttle_counter_hit(*, bucket: str, seconds: int, now: float) -> tuple[int, float]:
    """Count one request in ``bucket``'s fixed window of ``seconds`` containing ``now`` (epoch
    seconds), atomically; returns (the count including this request, seconds until the window ends)."""
    window = int(now // seconds)
    if settings.CACHES["default"]["BACKEND"] in ATOMIC_INCR_CACHES:
        count = _cache_counter_hit(bucket, window, seconds)
    else:
        count = _database_counter_hit(bucket, window)
    return count, (window + 1) * seconds - now


# Bucket prefix -> the rate it is counted under (AccountApiThrottle.buckets).
BUCKET_RATES = {"key:": "api_key", "team:": "team", "user:": "user", "anon:": "anon"}
# How long a counter row outlives its window before the hourly prune deletes it.
COUNTER_RETENTION_SECONDS = 24 * 3600


def throttle_counters_prune(*, now: float) -> int:
    """Delete the database counters (the embedded default's) whose window ended more than
    COUNTER_RETENTION_SECONDS ago: one row per key, team, user or client address that ever called would
    otherwise stay forever. Returns how many rows went. Run hourly by accounts.tasks."""
    rates = settings.REST_FRAMEWORK.get("DEFAULT_THROTTLE_RATES", {})
    deleted = 0
    for prefix, rate_name in BUCKET_RATES.items():
        _, seconds = rate_parse(rates.get(rate_name) or "1/d")  # no rate: rows are a day's windows at most
        stale_before = int((now - COUNTER_RETENTION_SECONDS) // seconds)
        rows = ApiThrottleCounter.objects.filter(bucket__startswith=prefix, window_index__lt=stale_before)
        deleted += rows.delete()[0]
    return deleted


class AccountApiThrottle(BaseThrottle):
    """The account API's abuse throttle (a default throttle class): see the module docstring."""

    def buckets(self, request) -> list[tuple[str, str]]:
        """(bucket, rate name) for each counter ``request`` counts in, in the order they are checked."""
        if isinstance(request.auth, AuthenticatedKey):
            return [(f"key:{request.auth.key_id}", "api_key"), (f"team:{request.auth.team_id}", "team")]
        if request.user is not None and request.user.is_authenticated:
            team = team_for_request(request)
            buckets = [(f"user:{request.user.pk}", "user")]
            return [*buckets, (f"team:{team.pk}", "team")] if team is not None else buckets
        return [(f"anon:{self.get_ident(request)}", "anon")]

    def allow_request(self, request, view) -> bool:
        rates = settings.REST_FRAMEWORK.get("DEFAULT_THROTTLE_RATES", {})
        now = time.time()
        for bucket, rate_name in self.buckets(request):
            rate = rates.get(rate_name)
            if rate is None:  # no rate configured for this kind of caller: not limited
                continue
            limit, seconds = rate_parse(rate)
            count, reset_in = throttle_counter_hit(bucket=bucket, seconds=seconds, now=now)
            if count > limit:
                raise exceptions.Throttled(
                    wait=reset_in,
                    detail=f"Too many account API requests ({rate_name} limit: {rate}).",
                    code="rate_limit_exceeded",
                )
        return True
