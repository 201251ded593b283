"""Refusal counts: buffered per (hour, team, tier, code), flushed in one statement that adds to what
is stored (simulation counts a month of aggregate refusals per team in one call, ``count=``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from accounts.selectors import team_for_user
from tiers.services import user_create
from usage import refusals
from usage.models import QuotaRefusalCount

pytestmark = pytest.mark.django_db


def test_a_flush_inserts_new_buckets_and_adds_to_stored_ones(catalog):
    refusals.refusal_counts_discard()
    team = team_for_user(user=user_create(email="refused@example.com"))
    at = datetime(2026, 5, 1, 10, 42, tzinfo=UTC)
    refusals.refusal_count(team_id=team.pk, tier_slug="free", code="rate_limit_exceeded", now=at)
    refusals.refusal_count(team_id=team.pk, tier_slug="free", code="rate_limit_exceeded", now=at, count=4)
    refusals.refusal_count(team_id=team.pk, tier_slug="free", code="insufficient_quota", now=at, count=7)
    assert refusals.refusal_counts_flush() == 2
    refusals.refusal_count(team_id=team.pk, tier_slug="free", code="rate_limit_exceeded", now=at, count=10)
    assert refusals.refusal_counts_flush() == 1
    assert refusals.refusal_counts_flush() == 0
    stored = {row.code: (row.hour, row.count) for row in QuotaRefusalCount.objects.filter(team=team)}
    hour = datetime(2026, 5, 1, 10, tzinfo=UTC)
    assert stored == {"rate_limit_exceeded": (hour, 15), "insufficient_quota": (hour, 7)}
