"""core.local_cache.TTLCache stays bounded without dropping every entry at once, and
core.compiled_query.CompiledFirst answers exactly what the ORM's ``values_list(...).first()`` does."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import ApiKey
from accounts.selectors import _load_key_row, api_key_authenticate, api_key_cache_clear, team_for_user
from accounts.services import api_key_create, api_key_revoke
from core.compiled_query import CompiledFirst
from core.local_cache import TTLCache
from tiers.selectors import _load_entitlements, entitlements_cache_clear, entitlements_for_teams
from tiers.services import user_create


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_full_cache_drops_its_oldest_entries_first_not_all_of_them():
    clock = Clock()
    cache: TTLCache[int, int] = TTLCache(ttl=10, max_entries=3, clock=clock)
    loads = []

    def load(key: int):
        return lambda: loads.append(key) or key * 10

    for key in (1, 2, 3):
        assert cache.get_or_load(key, load(key)) == key * 10
        clock.now += 1
    cache.get_or_load(4, load(4))  # full: 1, the oldest, goes
    assert len(cache) == 3
    loads.clear()
    assert [cache.get_or_load(k, load(k)) for k in (2, 3, 4)] == [20, 30, 40]
    assert loads == []  # still cached
    cache.get_or_load(1, load(1))
    assert loads == [1]  # 1 was evicted and reloaded; 2 went in its place
    assert len(cache) == 3


def test_a_reloaded_entry_moves_to_the_end_and_expired_ones_reload():
    clock = Clock()
    cache: TTLCache[str, str] = TTLCache(ttl=5, max_entries=2, clock=clock)
    cache.get_or_load("a", lambda: "a1")
    cache.get_or_load("b", lambda: "b1")
    clock.now += 6  # both expired
    assert cache.get_or_load("a", lambda: "a2") == "a2"  # reloaded: now the newest
    cache.get_or_load("c", lambda: "c1")  # full: b (oldest) goes, a stays
    assert cache.get_or_load("a", lambda: "a3") == "a2"
    assert cache.get_or_load("b", lambda: "b2") == "b2"


def test_max_entries_below_one_is_refused():
    with pytest.raises(ValueError, match="max_entries"):
        TTLCache(ttl=1, max_entries=0)


@pytest.mark.django_db
def test_compiled_reads_equal_the_orm_reads(catalog):
    api_key_cache_clear()
    entitlements_cache_clear()
    team = team_for_user(user=user_create(email="compiled@example.com"))
    key, secret = api_key_create(team=team, name="compiled")
    orm = (
        ApiKey.objects.filter(prefix=key.prefix)
        .values_list("id", "team_id", "name", "secret_hash", "expires_at", "revoked_at", "scopes", "created_by_id")
        .first()
    )
    row = _load_key_row(key.prefix)
    assert (row.key_id, row.team_id, row.name, row.secret_hash, row.expires_at, row.revoked_at) == orm[:6]
    assert row.scopes == frozenset(orm[6]) and row.created_by_id == orm[7]
    assert _load_key_row("tl_nothing_here") is None
    # The entitlements: equal to the uncached bulk reader's (the ORM with select_related).
    assert _load_entitlements(team.id) == entitlements_for_teams(team_ids=[team.id])[team.id]
    assert _load_entitlements(team.id + 10_000) is None
    # Datetimes come back aware, as the ORM gives them: a revocation compares with now.
    assert api_key_authenticate(raw_key=secret) is not None
    api_key_revoke(key=key)
    api_key_cache_clear()
    revoked = _load_key_row(key.prefix)
    assert revoked.revoked_at is not None and revoked.revoked_at.tzinfo is not None
    assert revoked.revoked_at <= timezone.now() + timedelta(seconds=1)
    assert api_key_authenticate(raw_key=secret) is None


def test_a_compiled_query_needs_each_argument_as_one_parameter():
    query = CompiledFirst(lambda a: ApiKey.objects.filter(name=a, prefix=a).values_list("id"), arity=1)
    with pytest.raises(ValueError, match="parameters, not one"):
        query.first("x")
