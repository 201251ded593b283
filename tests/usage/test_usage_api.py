from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from rest_framework.test import APIClient

from accounts.selectors import team_for_user
from tiers import services as tier_services
from usage.quotas.base import UsageEvent
from usage.rollups import usage_rollup_fold
from usage.services import usage_records_create


def _event(team_id, n, model, when, prompt=10, completion=5):
    return UsageEvent(
        request_id=f"r{n}", team_id=team_id, api_key_id=None, model=model,
        prompt_tokens=prompt, completion_tokens=completion, created_at=when,
    )  # fmt: skip


@pytest.fixture
def history(catalog):
    alice = tier_services.user_create(email="alice@example.com")
    bob = tier_services.user_create(email="bob@example.com")
    a, b = team_for_user(user=alice), team_for_user(user=bob)
    events = [
        _event(a.pk, 1, "Llama-3.3-8B-Instruct", datetime(2026, 3, 1, 9, 15, tzinfo=UTC)),
        _event(a.pk, 2, "Llama-3.3-8B-Instruct", datetime(2026, 3, 1, 9, 45, tzinfo=UTC), 20, 10),
        _event(a.pk, 3, "Llama-3.3-70B-Instruct", datetime(2026, 3, 1, 10, 5, tzinfo=UTC)),
        _event(a.pk, 4, "Llama-3.3-8B-Instruct", datetime(2026, 3, 2, 23, 59, tzinfo=UTC)),
        _event(b.pk, 1, "Llama-3.3-8B-Instruct", datetime(2026, 3, 1, 9, 30, tzinfo=UTC), 1000, 1000),
    ]
    # Part of the history folded into rollups, part still only records: the API serves both.
    assert usage_records_create(events=events[:3]) == 3
    assert usage_rollup_fold() == 3
    assert usage_records_create(events=events) == 2
    assert usage_records_create(events=events) == 0  # replays add nothing
    return alice, bob


@pytest.mark.django_db
def test_usage_series_by_day_and_hour_only_for_the_callers_team(history):
    alice, _ = history
    client = APIClient()
    client.force_login(alice)
    body = client.get("/api/v1/usage", {"start": "2026-03-01", "end": "2026-03-03"}).json()
    rows = [(r["period"][:10], r["model"], r["requests"], r["total_tokens"]) for r in body["data"]]
    assert rows == [
        ("2026-03-01", "Llama-3.3-70B-Instruct", 1, 15),
        ("2026-03-01", "Llama-3.3-8B-Instruct", 2, 45),
        ("2026-03-02", "Llama-3.3-8B-Instruct", 1, 15),
    ]
    hourly = client.get(
        "/api/v1/usage", {"start": "2026-03-01T09:00:00Z", "end": "2026-03-01T11:00", "granularity": "hour"}
    )
    rows = [(r["period"][11:16], r["model"], r["requests"]) for r in hourly.json()["data"]]
    assert rows == [("09:00", "Llama-3.3-8B-Instruct", 2), ("10:00", "Llama-3.3-70B-Instruct", 1)]


@pytest.mark.django_db
def test_usage_csv_export(history):
    alice, _ = history
    client = APIClient()
    client.force_login(alice)
    response = client.get("/api/v1/usage", {"start": "2026-03-01", "end": "2026-03-03", "format": "csv"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["period", "model", "requests", "prompt_tokens", "completion_tokens", "total_tokens"]
    assert rows[1:] == [
        ["2026-03-01T00:00:00+00:00", "Llama-3.3-70B-Instruct", "1", "10", "5", "15"],
        ["2026-03-01T00:00:00+00:00", "Llama-3.3-8B-Instruct", "2", "30", "15", "45"],
        ["2026-03-02T00:00:00+00:00", "Llama-3.3-8B-Instruct", "1", "10", "5", "15"],
    ]


@pytest.mark.django_db
def test_usage_bad_parameters_are_400_with_the_param(history):
    alice, _ = history
    client = APIClient()
    client.force_login(alice)
    for params, param in [
        ({"start": "yesterday"}, "start"),
        ({"start": "2026-03-05", "end": "2026-03-01"}, "start"),
        ({"granularity": "minute"}, "granularity"),
        ({"start": "2026-01-01", "end": "2026-03-01", "granularity": "hour"}, "start"),
    ]:
        response = client.get("/api/v1/usage", params)
        assert response.status_code == 400, params
        assert response.json()["error"]["param"] == param


@pytest.mark.django_db
def test_usage_needs_authentication(history):
    assert APIClient().get("/api/v1/usage").status_code in (401, 403)


@pytest.mark.django_db
def test_usage_csv_export_by_hour_for_one_model_after_everything_is_folded(history):
    alice, _ = history
    assert usage_rollup_fold() == 2
    client = APIClient()
    client.force_login(alice)
    params = {"start": "2026-03-01", "end": "2026-03-03", "granularity": "hour", "format": "csv"}
    response = client.get("/api/v1/usage", {**params, "model": "Llama-3.3-8B-Instruct"})
    assert response["Content-Disposition"] == 'attachment; filename="usage-20260301-20260303-hour.csv"'
    assert list(csv.reader(io.StringIO(response.content.decode()))) == [
        ["period", "model", "requests", "prompt_tokens", "completion_tokens", "total_tokens"],
        ["2026-03-01T09:00:00+00:00", "Llama-3.3-8B-Instruct", "2", "30", "15", "45"],
        ["2026-03-02T23:00:00+00:00", "Llama-3.3-8B-Instruct", "1", "10", "5", "15"],
    ]


@pytest.mark.django_db
def test_a_day_series_starting_mid_day_includes_that_whole_day(history):
    alice, _ = history
    client = APIClient()
    client.force_login(alice)
    body = client.get("/api/v1/usage", {"start": "2026-03-01T10:00:00Z", "end": "2026-03-02T00:00:00Z"}).json()
    assert [(r["period"], r["model"], r["requests"]) for r in body["data"]] == [
        ("2026-03-01T00:00:00Z", "Llama-3.3-70B-Instruct", 1),
        ("2026-03-01T00:00:00Z", "Llama-3.3-8B-Instruct", 2),
    ]
