"""The model API through Django's test client, on the embedded default (database quota backend)."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from accounts import services
from accounts.selectors import api_key_cache_clear, team_for_user
from tiers import services as tier_services
from tiers.models import Subscription, Tier
from tiers.selectors import entitlements_cache_clear
from usage.models import TeamQuotaState, UsageRecord

CHAT = "/v1/chat/completions"
COMPAT_CHAT = "/compat/v1/chat/completions"
SMALL = "Llama-3.3-8B-Instruct"
BIG = "Llama-3.3-70B-Instruct"


@pytest.fixture(autouse=True)
def _fresh_caches():
    api_key_cache_clear()
    entitlements_cache_clear()
    yield
    api_key_cache_clear()
    entitlements_cache_clear()


@pytest.fixture
def account(catalog):
    user = tier_services.user_create(email="dev@example.com")
    team = team_for_user(user=user)
    key, secret = services.api_key_create(team=team, name="test")
    return team, key, secret


def post(path, body, secret=None, **headers):
    client = Client()
    if secret:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(path, data, content_type="application/json", **headers)


def chat_body(**overrides):
    body = {"model": SMALL, "messages": [{"role": "user", "content": "What is a llama?"}]}
    body.update(overrides)
    return body


def set_tier_limits(team, **limits):
    """Give the team a private tier with exactly these limits."""
    free = Tier.objects.get(slug="free")
    tier = Tier.objects.create(
        slug="test-tier", name="Test", is_paid=False, price_cents=0, **{
            "requests_per_minute": None, "tokens_per_minute": None, "requests_per_day": None, "monthly_tokens": None,
            **limits,
        }
    )  # fmt: skip
    tier.allowed_models.set(free.allowed_models.all())
    Subscription.objects.filter(team=team).update(tier=tier)
    entitlements_cache_clear()
    return tier


@pytest.mark.django_db
def test_native_chat_completion_shape_headers_and_usage_record(account):
    team, key, secret = account
    response = post(CHAT, chat_body(max_completion_tokens=50), secret, HTTP_X_REQUEST_ID="client-req-1")
    assert response.status_code == 200
    body = response.json()
    message = body["completion_message"]
    assert message["role"] == "assistant" and message["content"]["type"] == "text" and message["content"]["text"]
    assert message["stop_reason"] in {"stop", "length"}
    metrics = {m["metric"]: m["value"] for m in body["metrics"]}
    assert metrics["num_total_tokens"] == metrics["num_prompt_tokens"] + metrics["num_completion_tokens"]
    assert metrics["num_completion_tokens"] <= 50
    assert response["x-request-id"] == "client-req-1"
    assert response["x-ratelimit-limit-requests"] == "10"
    assert response["x-ratelimit-remaining-requests"] == "9"
    assert int(response["x-ratelimit-remaining-tokens"]) == 10_000 - metrics["num_total_tokens"]
    assert response["x-ratelimit-reset-requests"].endswith("s")

    record = UsageRecord.objects.get()
    assert (record.request_id, record.team_id, record.api_key_id, record.model) == (
        "client-req-1",
        team.pk,
        key.pk,
        SMALL,
    )
    assert (record.prompt_tokens, record.completion_tokens) == (
        metrics["num_prompt_tokens"],
        metrics["num_completion_tokens"],
    )
    state = TeamQuotaState.objects.get(team=team)
    assert (state.minute_requests, state.day_requests, state.period_tokens) == (1, 1, record.total_tokens)


@pytest.mark.django_db
def test_same_input_same_output_and_length_cut(account):
    _, _, secret = account
    first = post(CHAT, chat_body(), secret).json()["completion_message"]["content"]["text"]
    second = post(CHAT, chat_body(), secret).json()["completion_message"]["content"]["text"]
    assert first == second
    cut = post(CHAT, chat_body(max_completion_tokens=3), secret).json()
    assert cut["completion_message"]["stop_reason"] == "length"
    assert {m["metric"]: m["value"] for m in cut["metrics"]}["num_completion_tokens"] == 3


@pytest.mark.django_db
def test_compat_chat_completion_shape(account):
    _, _, secret = account
    body = post(COMPAT_CHAT, chat_body(max_tokens=4), secret).json()
    assert body["object"] == "chat.completion" and body["model"] == SMALL
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 4


@pytest.mark.django_db
def test_client_retry_with_same_request_id_is_not_counted_twice(account):
    team, _, secret = account
    first = post(CHAT, chat_body(), secret, HTTP_X_REQUEST_ID="retry-me")
    again = post(CHAT, chat_body(), secret, HTTP_X_REQUEST_ID="retry-me")
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert UsageRecord.objects.count() == 1
    state = TeamQuotaState.objects.get(team=team)
    assert state.day_requests == 1 and state.period_tokens == UsageRecord.objects.get().total_tokens


@pytest.mark.django_db
def test_streaming_native_and_compat_are_settled_once(account):
    team, _, secret = account
    response = post(CHAT, chat_body(stream=True), secret)
    assert response["Content-Type"] == "text/event-stream"
    events = [
        json.loads(line[6:])
        for line in b"".join(response.streaming_content).decode().splitlines()
        if line.startswith("data: ")
    ]
    kinds = [e["event"]["event_type"] for e in events]
    assert kinds[0] == "start" and kinds[-2:] == ["complete", "metrics"] and set(kinds[1:-2]) == {"progress"}
    text = "".join(e["event"]["delta"]["text"] for e in events)
    metrics = {m["metric"]: m["value"] for m in events[-1]["event"]["metrics"]}

    response = post(COMPAT_CHAT, chat_body(stream=True, stream_options={"include_usage": True}), secret)
    lines = [
        line[6:] for line in b"".join(response.streaming_content).decode().splitlines() if line.startswith("data: ")
    ]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    compat_text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert compat_text == text  # same model, same input, same output in both shapes
    assert chunks[-1]["usage"]["completion_tokens"] == metrics["num_completion_tokens"]

    records = list(UsageRecord.objects.order_by("created_at"))
    assert len(records) == 2 and {r.completion_tokens for r in records} == {metrics["num_completion_tokens"]}
    assert TeamQuotaState.objects.get(team=team).period_tokens == sum(r.total_tokens for r in records)


@pytest.mark.django_db
def test_models_list_only_the_tiers_models(account):
    _, _, secret = account
    client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [SMALL]
    compat = client.get("/compat/v1/models").json()
    assert compat["object"] == "list" and [m["id"] for m in compat["data"]] == [SMALL]
    assert client.get(f"/v1/models/{SMALL}").json()["id"] == SMALL
    assert client.get(f"/v1/models/{BIG}").json()["error"]["code"] == "model_not_allowed"
    assert client.get("/v1/models/No-Such-Model").status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ("{not json", None),
        ("[1, 2]", None),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": SMALL}, "messages"),
        ({"model": SMALL, "messages": []}, "messages"),
        ({"model": SMALL, "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"model": SMALL, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"model": SMALL, "messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
            "messages[0].content[0].text",
        ),
        (chat_body(max_completion_tokens=0), "max_completion_tokens"),
        (chat_body(max_completion_tokens="10"), "max_completion_tokens"),
        (chat_body(stream="yes"), "stream"),
        (chat_body(temperature=3), "temperature"),
    ],
)  # fmt: skip
def test_malformed_bodies_are_400_with_param_and_change_nothing(account, body, param):
    _, _, secret = account
    response = post(CHAT, body, secret)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    assert not UsageRecord.objects.exists() and not TeamQuotaState.objects.exists()


@pytest.mark.django_db
def test_auth_and_entitlement_errors(account):
    team, _, secret = account
    for headers, status, code in [
        ({}, 401, "invalid_api_key"),
        ({"HTTP_AUTHORIZATION": "Bearer tl-wrongwrongwrongwrongwrongwrongwrong"}, 401, "invalid_api_key"),
        ({"HTTP_AUTHORIZATION": "Basic abc"}, 401, "invalid_api_key"),
    ]:
        response = post(CHAT, chat_body(), **headers)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    response = post(CHAT, chat_body(model=BIG), secret)
    assert (response.status_code, response.json()["error"]["code"]) == (403, "model_not_allowed")
    response = post(CHAT, chat_body(model="Llama-9-Imaginary"), secret)
    assert (response.status_code, response.json()["error"]["code"]) == (404, "model_not_found")
    assert Client().get("/v1/chat/completions").status_code == 405

    Subscription.objects.filter(team=team).update(status=Subscription.Status.SUSPENDED)
    entitlements_cache_clear()
    response = post(CHAT, chat_body(), secret)
    assert (response.status_code, response.json()["error"]["code"]) == (429, "subscription_inactive")
    assert not UsageRecord.objects.exists()


@pytest.mark.django_db
def test_rate_limit_is_429_with_retry_after_and_distinct_from_quota(account):
    team, _, secret = account
    set_tier_limits(team, requests_per_minute=2)
    assert post(CHAT, chat_body(), secret).status_code == 200
    assert post(CHAT, chat_body(), secret).status_code == 200
    refused = post(CHAT, chat_body(), secret)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert refused["x-ratelimit-remaining-requests"] == "0"
    assert UsageRecord.objects.count() == 2


@pytest.mark.django_db
def test_monthly_hard_cap_is_insufficient_quota(account):
    team, _, secret = account
    set_tier_limits(team, monthly_tokens=120)
    ok = post(CHAT, chat_body(max_completion_tokens=20), secret)
    assert ok.status_code == 200
    refused = post(CHAT, chat_body(max_completion_tokens=200), secret)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert int(refused["Retry-After"]) > 3600  # the period renews in about a month
    assert UsageRecord.objects.count() == 1


@pytest.mark.django_db
def test_overage_tier_is_never_refused_for_monthly_tokens(account):
    team, _, secret = account
    tier = set_tier_limits(team, monthly_tokens=10)
    Tier.objects.filter(pk=tier.pk).update(
        is_paid=True, price_cents=100, overage_policy="bill", overage_cents_per_million_tokens=50
    )
    entitlements_cache_clear()
    assert post(CHAT, chat_body(), secret).status_code == 200
    assert post(CHAT, chat_body(), secret).status_code == 200
    assert TeamQuotaState.objects.get(team=team).period_tokens > 10


@pytest.mark.django_db
def test_moderation_flags_and_counts_as_a_request_without_tokens(account):
    team, _, secret = account
    response = post(
        "/v1/moderations",
        {
            "messages": [
                {"role": "user", "content": "how do I make a bomb"},
                {"role": "user", "content": "nice weather"},
            ]
        },
        secret,
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert results[0]["flagged"] and results[0]["flagged_categories"]
    assert not results[1]["flagged"]
    record = UsageRecord.objects.get()
    assert record.total_tokens == 0 and TeamQuotaState.objects.get(team=team).day_requests == 1


@pytest.mark.django_db
def test_one_team_cannot_use_another_teams_key_or_see_its_usage(account, catalog):
    team, _, secret = account
    other_user = tier_services.user_create(email="other@example.com")
    other_team = team_for_user(user=other_user)
    post(CHAT, chat_body(), secret)
    records = UsageRecord.objects.all()
    assert [r.team_id for r in records] == [team.pk]  # the key's team is charged, nobody else
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_login(other_user)
    assert client.get("/api/v1/usage").json()["data"] == []
    assert other_team.pk != team.pk


@pytest.mark.django_db
def test_past_due_keeps_access_during_the_grace_period_only(account, settings):
    from datetime import timedelta

    from django.utils import timezone

    team, _, secret = account
    Subscription.objects.filter(team=team).update(
        status=Subscription.Status.PAST_DUE, past_due_since=timezone.now() - timedelta(days=1)
    )
    entitlements_cache_clear()
    assert post(CHAT, chat_body(), secret).status_code == 200
    Subscription.objects.filter(team=team).update(
        past_due_since=timezone.now() - timedelta(days=settings.TIERLAB_PAST_DUE_GRACE_DAYS, seconds=1)
    )
    entitlements_cache_clear()
    response = post(CHAT, chat_body(), secret)
    assert (response.status_code, response.json()["error"]["code"]) == (429, "subscription_inactive")
