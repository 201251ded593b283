"""The two ways entitlements are read agree field by field: the request path's cached, compiled read
(``entitlements_for_team``) and the many-teams read (``entitlements_for_teams``, from model instances).
A field added to ``Entitlements`` but forgotten on one path (the stored period, API access) fails here."""

from __future__ import annotations

import dataclasses

import pytest

from accounts.selectors import team_for_user
from tiers import services as tier_services
from tiers.selectors import entitlements_cache_clear, entitlements_for_team, entitlements_for_teams


@pytest.mark.parametrize("tier_slug", ["free", "plus", "pro", "assistant"])
def test_the_cached_read_equals_the_many_teams_read(catalog, tier_slug):
    user = tier_services.user_create(email=f"{tier_slug}@example.com", password="x-Secret-123", tier_slug=tier_slug)
    team = team_for_user(user=user)
    entitlements_cache_clear()
    cached = entitlements_for_team(team_id=team.id)
    many = entitlements_for_teams(team_ids=[team.id])[team.id]
    assert cached is not None and many is not None
    assert dataclasses.asdict(cached) == dataclasses.asdict(many)
    assert cached.includes_api_access is (tier_slug != "assistant")
    assert cached.current_period_start is not None and cached.current_period_end is not None
