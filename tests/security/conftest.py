"""Shared by the security tests."""

from __future__ import annotations

import pytest

from accounts import services
from accounts.selectors import team_for_user
from tiers import services as tier_services


@pytest.fixture
def account(catalog):
    """(user, API key secret) of a Free-tier subscriber with a default (model + read) key."""
    user = tier_services.user_create(email="dev@example.com", password="dev-password-1234")
    team = team_for_user(user=user)
    _, secret = services.api_key_create(team=team, name="test")
    return user, secret
