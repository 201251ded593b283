"""Refusal counts: the model API stores each refusal as it happens (one atomic upsert); aggregate callers
(the simulator) buffer counts per (hour, team, tier, code) and flush them in one statement."""

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


def test_model_api_refusals_are_stored_as_they_happen(catalog):
    """Issue 16, finding 6: every refusal of the model API is in the table when the response is sent,
    whatever this process does next (no buffer waits for the next refusal)."""
    import json

    from django.test import Client

    from accounts.services import api_key_create

    refusals.refusal_counts_discard()
    team = team_for_user(user=user_create(email="busy@example.com"))
    _key, secret = api_key_create(team=team, name="load")
    client = Client()
    body = json.dumps({"model": "Llama-3.3-8B-Instruct", "messages": [{"role": "user", "content": "hi"}]})
    counted = []
    for _ in range(14):  # the free tier admits 10 a minute
        response = client.post(
            "/v1/chat/completions", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}"
        )
        if response.status_code == 429:
            counted.append(sum(QuotaRefusalCount.objects.filter(team=team).values_list("count", flat=True)))
    assert counted == [1, 2, 3, 4]
    row = QuotaRefusalCount.objects.get(team=team)
    assert (row.tier_slug, row.code) == ("free", "rate_limit_exceeded")
    assert refusals.refusal_counts_flush() == 0  # nothing was left waiting
