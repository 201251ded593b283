"""The cache invalidation feed (core/invalidation.py): the database's triggers publish every change to
what the model API caches, whoever makes it; each process's poll drops exactly the changed teams'
entries; ids that commit out of order are waited for; a load that raced a change, and a feed that
cannot be read, keep entries only TIERLAB_AUTH_CACHE_SECONDS. On SQLite, and on PostgreSQL in CI's
second half (DATABASE_URL)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from accounts.selectors import api_key_authenticate, team_for_user
from accounts.services import api_key_create, api_key_revoke
from core import invalidation
from core.invalidation import GAP_GRACE_SECONDS, _Feed, cache_invalidations_poll, feed
from core.local_cache import InvalidatedCache
from core.models import CacheInvalidation
from partners.models import LicenseAgreement
from tiers.models import LanguageModel, Subscription, Tier
from tiers.selectors import entitlements_for_team
from tiers.services import user_create

pytestmark = pytest.mark.django_db

CACHED_TABLES = {
    "accounts_apikey",
    "tiers_subscription",
    "tiers_tier",
    "tiers_tier_allowed_models",
    "tiers_languagemodel",
    "partners_licenseagreement",
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _published() -> list[int | None]:
    return list(CacheInvalidation.objects.order_by("id").values_list("team_id", flat=True))


def _team(email: str, tier: str = "free"):
    return team_for_user(user=user_create(email=email, tier_slug=tier))


def test_every_cached_table_has_its_three_triggers():
    # A later migration that makes SQLite rebuild one of these tables drops its triggers: this says so.
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT tgname FROM pg_trigger WHERE tgname LIKE 'tl_invalidate_%%'")
        else:
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'tl_invalidate_%'")
        names = {row[0] for row in cursor.fetchall()}
    assert names == {
        f"tl_invalidate_{table}_{event}" for table in CACHED_TABLES for event in ("insert", "update", "delete")
    }


def test_the_database_publishes_what_a_cache_holds_and_nothing_else(catalog):
    team = _team("feed@example.com")
    other = _team("other@example.com")
    key, _ = api_key_create(team=team, name="k")
    CacheInvalidation.objects.all().delete()

    # Whoever writes: a bulk update bypasses every service, and is published all the same.
    Subscription.objects.filter(team=team).update(tier=Tier.objects.get(slug="pro"))
    assert _published() == [team.pk]
    # A period advance (the close) and a key's last use are not what the caches hold.
    now = timezone.now()
    Subscription.objects.filter(team=other).update(
        current_period_start=now, current_period_end=now + timedelta(days=30)
    )
    ApiKey = type(key)
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    assert _published() == [team.pk]
    api_key_revoke(key=key)
    assert _published() == [team.pk, team.pk]
    # A tier's terms or its models: every team (None), once per statement on PostgreSQL.
    Tier.objects.filter(slug="pro").update(requests_per_minute=7)
    assert _published()[2:] == [None]
    LanguageModel.objects.filter(model_id=LanguageModel.objects.first().model_id).update(is_active=False)
    assert _published()[3:] == [None]
    CacheInvalidation.objects.all().delete()
    agreement = LicenseAgreement.objects.create(
        team=other, required_from=date(2026, 1, 1), reported_mau=800_000_000, mau_month=date(2026, 1, 1),
        created_at=now, updated_at=now,
    )  # fmt: skip
    agreement.status = LicenseAgreement.Status.GRANTED
    agreement.save()
    assert _published() == [other.pk, other.pk]


def test_a_poll_drops_exactly_the_changed_teams_entries(catalog):
    team = _team("a@example.com")
    other = _team("b@example.com")
    cache_invalidations_poll(force=True)
    mine, theirs = entitlements_for_team(team_id=team.pk), entitlements_for_team(team_id=other.pk)
    assert mine.tier_slug == "free"

    Subscription.objects.filter(team=team).update(tier=Tier.objects.get(slug="pro"))
    assert entitlements_for_team(team_id=team.pk) is mine  # no poll due yet: still cached
    cache_invalidations_poll(force=True)
    assert entitlements_for_team(team_id=team.pk).tier_slug == "pro"
    assert entitlements_for_team(team_id=other.pk) is theirs  # another team's entry is kept


def test_a_revoked_key_is_refused_after_the_next_poll_and_a_cached_hit_costs_no_query(
    catalog, django_assert_num_queries, settings
):
    team = _team("k@example.com")
    key, secret = api_key_create(team=team, name="k")
    assert api_key_authenticate(raw_key=secret) is not None
    with django_assert_num_queries(0):  # cached, no poll due
        assert api_key_authenticate(raw_key=secret) is not None
    type(key).objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    feed._next_poll = 0.0  # as if TIERLAB_AUTH_CACHE_SECONDS / 3 had passed
    # The poll (in a savepoint here: a test runs inside a transaction), then the key read again.
    with django_assert_num_queries(4):
        assert api_key_authenticate(raw_key=secret) is None


def test_ids_committed_out_of_order_are_waited_for_then_given_up():
    clock = Clock()
    seen: list[frozenset[int] | None] = []
    f = _Feed(clock=clock)
    f.subscribe(seen.append)
    f._take([(10, 1)], clock.now)  # the first read: where to start, nothing applied
    assert seen == [] and f._high == 10
    f._take([(11, 2), (13, 3)], clock.now)  # 12 is not committed yet (or was rolled back)
    assert seen == [frozenset({2, 3})] and set(f._missing) == {12}
    f._take([(11, 2), (12, 4), (13, 3)], clock.now + 1)  # 12 commits: read again because it was missing
    assert seen[-1] == frozenset({4}) and f._missing == {}
    f._take([(15, None)], clock.now + 2)  # a tier changed: every team
    assert seen[-1] is None and set(f._missing) == {14}
    f._take([], clock.now + 3 + GAP_GRACE_SECONDS)  # 14 never came: given up
    assert f._missing == {} and len(seen) == 3


def test_a_load_that_raced_a_change_is_kept_only_the_short_time(settings):
    clock = Clock()
    cache: InvalidatedCache[int, str] = InvalidatedCache(clock=clock)
    feed._next_poll = float("inf")  # no poll in this test: the change arrives during the load

    def load_during_a_change() -> str:
        feed.apply(frozenset({99}))  # another thread's poll dropped something while this read ran
        return "read before the change"

    cache.get_or_load(1, load_during_a_change)
    cache.get_or_load(2, lambda: "read after it")
    clock.now += settings.TIERLAB_AUTH_CACHE_SECONDS + 1
    assert cache.get_or_load(1, lambda: "reloaded") == "reloaded"
    assert cache.get_or_load(2, lambda: "reloaded") == "read after it"  # kept for minutes


def test_an_unreadable_feed_drops_every_entry(catalog, monkeypatch):
    team = _team("down@example.com")
    cache_invalidations_poll(force=True)
    first = entitlements_for_team(team_id=team.pk)

    def down(self):
        raise OperationalError("connection refused")

    monkeypatch.setattr(invalidation._Feed, "_read", down)
    cache_invalidations_poll(force=True)
    assert entitlements_for_team(team_id=team.pk) is not first  # read again: nothing kept unchecked


def test_prune_deletes_rows_older_than_the_retention(catalog):
    _team("prune@example.com")
    assert CacheInvalidation.objects.exists()
    now = timezone.now()
    assert invalidation.cache_invalidations_prune(now=now) == 0
    assert invalidation.cache_invalidations_prune(now=now + invalidation.RETENTION + timedelta(minutes=1)) >= 1
    assert not CacheInvalidation.objects.exists()
