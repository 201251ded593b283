"""Small in-process caches with a time-to-live, for the model API's hot path.

Each web worker process keeps its own copy, so nothing is shared. ``TTLCache``: an entry is at most
``ttl`` seconds stale. ``InvalidatedCache`` (keys, entitlements, licence gates): entries are kept for
minutes and dropped within TIERLAB_AUTH_CACHE_SECONDS of a change through the invalidation feed
(core/invalidation.py), the contract the API gives for revocations and tier changes ("within a few
seconds"); so with thousands of active teams a key's lookup stays off the database for all but its
first request per process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


# Entries per cache and process. Each cache holds one entry per active key or team: the API key cache
# (accounts.selectors, ~820 bytes an entry), entitlements (tiers.selectors, ~470: the tier's terms are
# shared), the licence gate and the key's channel (usage.metering, ~120 each), and, bounded by the same
# number, usage.metering's current limits (~960), the Redis backend's prepared arguments (~990) and
# usage.services' last-used marks (~60); measured with tracemalloc, README.md "Benchmarks". About
# 3.5 KB per active team with one key: 20,000 teams, twice the 10,000 the benchmark drives, cost a web
# process at most ~70 MB. Past the bound the oldest entries go first.
DEFAULT_MAX_ENTRIES = 20_000


class TTLCache(Generic[K, V]):
    """Entries expire ``ttl`` seconds after they were loaded. At most ``max_entries``: the dict is kept
    in load order (a reload moves an entry to the end), which with one TTL is also expiry order, so a
    full cache drops its oldest entries first (the expired ones among them), one at a time: no sweep,
    and never everything at once (a full clear made every active team miss together)."""

    def __init__(
        self, *, ttl: float, max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.monotonic
    ):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get_or_load(self, key: K, load: Callable[[], V]) -> V:
        """The cached value for ``key``, or ``load()``'s result (cached, even when it is None)."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        value = load()
        self._store(key, value, now)
        return value

    def put(self, key: K, value: V) -> None:
        """Cache ``value`` for ``key`` as if it had just been loaded: for a caller that read it together
        with something else (usage.callers reads a key, its team's subscription and more in one statement)."""
        self._store(key, value, self._clock())

    def _store(self, key: K, value: V, now: float, *, ttl: float | None = None) -> None:
        with self._lock:
            entries = self._entries
            entries.pop(key, None)  # re-inserted at the end: the dict stays in expiry order
            while len(entries) >= self.max_entries:
                del entries[next(iter(entries))]
            entries[key] = (now + (self.ttl if ttl is None else ttl), value)

    def invalidate(self, key: K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class InvalidatedCache(TTLCache[K, V]):
    """A TTLCache for the model API's request path whose entries are kept for minutes
    (TIERLAB_AUTH_CACHE_MAX_SECONDS) because every change to what they hold reaches this process
    within TIERLAB_AUTH_CACHE_SECONDS through the invalidation feed (core/invalidation.py): each read
    first lets the feed poll if a poll is due, and the feed drops the changed teams' entries.

    ``team_of(key, value)``: the team an entry belongs to (None: dropped only when every team's are);
    without it the key is the team's id. ``short_misses``: a None value (no such key, no subscription)
    is kept only TIERLAB_AUTH_CACHE_SECONDS, so what is created next is not refused for minutes. A value
    loaded while the feed dropped entries (its read may predate the change) is also kept only that long.
    """

    def __init__(
        self,
        *,
        team_of: Callable[[K, V], int | None] | None = None,
        short_misses: bool = False,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ):
        from django.conf import settings

        from core.invalidation import cache_invalidations_subscribe

        super().__init__(ttl=settings.TIERLAB_AUTH_CACHE_MAX_SECONDS, max_entries=max_entries, clock=clock)
        self._team_of = team_of
        self._short_misses = short_misses
        cache_invalidations_subscribe(self._drop)

    def get_or_load(self, key: K, load: Callable[[], V]) -> V:
        from core.invalidation import cache_invalidations_poll, feed

        cache_invalidations_poll()
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        generation = feed.generation
        value = load()
        self._store(key, value, now, ttl=self._ttl_for(value, generation))
        return value

    def put(self, key: K, value: V, *, generation: int | None = None) -> None:
        """Cache ``value`` as if just loaded; ``generation``: ``cache_generation()`` before its read."""
        self._store(key, value, self._clock(), ttl=self._ttl_for(value, generation))

    def _ttl_for(self, value: V, generation: int | None) -> float:
        from django.conf import settings

        from core.invalidation import feed

        if (value is None and self._short_misses) or (generation is not None and generation != feed.generation):
            return settings.TIERLAB_AUTH_CACHE_SECONDS
        return self.ttl

    def _drop(self, teams: frozenset[int] | None) -> None:
        with self._lock:
            if teams is None:
                self._entries.clear()
            elif self._team_of is None:
                for team in teams:
                    self._entries.pop(team, None)  # type: ignore[call-overload]
            else:
                team_of = self._team_of
                for key in [k for k, (_, v) in self._entries.items() if team_of(k, v) in teams]:
                    del self._entries[key]


def cache_generation() -> int:
    """The invalidation feed's generation, for a caller that reads values to ``put`` later."""
    from core.invalidation import feed

    return feed.generation
