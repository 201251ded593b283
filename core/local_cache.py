"""A small in-process cache with a time-to-live, for the model API's hot path.

Each web worker process keeps its own copy, so nothing is shared and nothing is invalidated across
processes: an entry is at most ``ttl`` seconds stale. That is the contract the API gives for
revocations and tier changes ("within a few seconds"), and it keeps key and entitlement lookups off
the database for all but one request per key per ``ttl``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    def __init__(self, *, ttl: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get_or_load(self, key: K, load: Callable[[], V]) -> V:
        """The cached value for ``key``, or ``load()``'s result (cached, even when it is None)."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        value = load()
        with self._lock:
            if len(self._entries) >= self.max_entries:
                # Crude but bounded: drop everything expired, and if still full, everything.
                self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[key] = (now + self.ttl, value)
        return value

    def invalidate(self, key: K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
