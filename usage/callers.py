"""The model API's cold read: an API key with everything its request needs, in ONE statement.

A key never seen by this process (or whose team changed: the invalidation feed, core/invalidation.py)
misses the per-process caches of the request path (the key, its team's entitlements, licence gate and
the key's channel). Read one by one, a miss cost three or four indexed statements (issue 17 measured 2.1 SQL
reads per request at 10,000 teams, each a round trip and about 0.1 ms of client CPU, plus the
database's own). Here the key's row, its team's current subscription (an outer join: none is None),
and whatever the apps above usage add through ``usage.extensions.caller_columns`` (partners: the key's
channel partner, the team's licence gate) come back in one row, and each piece goes into the cache its
owner keeps (accounts' key cache through ``api_key_authenticate(load_row=...)``, tiers' entitlements
through ``entitlements_prime``, usage.metering's licence and channel caches), so the owners' own
invalidation (the feed, ``entitlements_cache_clear`` ...) keeps working unchanged. A tier's
terms and models are read once per tier and shared (tiers.selectors).

Compiled once per process like every read of the hot path (core/compiled_query.py).
"""

from __future__ import annotations

import threading
from typing import Any

from django.db.models import FilteredRelation, Q

from accounts.models import ApiKey
from accounts.selectors import API_KEY_ROW_FIELDS
from core.compiled_query import CompiledFirst
from core.local_cache import cache_generation
from tiers.models import Subscription
from tiers.selectors import SUBSCRIPTION_FIELDS, entitlements_prime
from usage import extensions

_KEY_COLUMNS = len(API_KEY_ROW_FIELDS)
_SUBSCRIPTION_END = _KEY_COLUMNS + len(SUBSCRIPTION_FIELDS)


class _CallerQuery:
    """The statement and the names of the extension columns it ends with, built on first use (after
    every app registered its extensions)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._built: tuple[CompiledFirst, tuple[str, ...]] | None = None

    def _build(self, prefix: str):
        extra = extensions.caller_columns()
        return (
            ApiKey.objects.filter(prefix=prefix)
            .annotate(
                # The current (not canceled) subscription: at most one per team (a unique constraint).
                current_subscription=FilteredRelation(
                    "team__subscriptions", condition=~Q(team__subscriptions__status=Subscription.Status.CANCELED)
                ),
                **extra,
            )
            .values_list(*API_KEY_ROW_FIELDS, *(f"current_subscription__{f}" for f in SUBSCRIPTION_FIELDS), *extra)
        )

    def get(self) -> tuple[CompiledFirst, tuple[str, ...]]:
        if self._built is None:
            with self._lock:
                if self._built is None:
                    self._built = (CompiledFirst(self._build, arity=1), tuple(extensions.caller_columns()))
        return self._built


_query = _CallerQuery()


def caller_row_load(prefix: str) -> tuple[tuple, dict[str, Any]] | None:
    """The key named by ``prefix`` (the values of accounts.selectors.API_KEY_ROW_FIELDS) and the
    extension columns by name, or None if there is no such key. Caches the team's entitlements on the
    way (tiers.selectors.entitlements_prime)."""
    query, names = _query.get()
    generation = cache_generation()
    row = query.first(prefix)
    if row is None:
        return None
    entitlements_prime(team_id=row[1], subscription=row[_KEY_COLUMNS:_SUBSCRIPTION_END], generation=generation)
    return row[:_KEY_COLUMNS], dict(zip(names, row[_SUBSCRIPTION_END:], strict=True))
