"""The official SDKs, unchanged, against a live TierLab server: `llama_api_client.LlamaAPIClient` on
/v1 and `openai.OpenAI` on /compat/v1, on both quota backends."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import llama_api_client
import openai
import pytest
from django.utils import timezone

from accounts import services
from accounts.selectors import api_key_cache_clear, team_for_user
from tiers import services as tier_services
from tiers.models import Subscription, Tier
from tiers.selectors import entitlements_cache_clear, entitlements_for_team
from usage.metering import limits_for
from usage.models import UsageRecord
from usage.quotas import get_quota_backend, reset_quota_backend_cache
from usage.quotas.base import LimitName

SMALL = "Llama-3.3-8B-Instruct"
BIG = "Llama-3.3-70B-Instruct"


@pytest.fixture(params=["database", "redis"])
def backend(request, settings):
    """Switches the live server (same process) to one quota backend."""
    settings.TIERLAB_QUOTA_BACKEND = request.param
    if request.param == "redis":
        settings.REDIS_URL = request.getfixturevalue("redis_server")
    reset_quota_backend_cache()
    api_key_cache_clear()
    entitlements_cache_clear()
    yield request.param
    reset_quota_backend_cache()
    api_key_cache_clear()
    entitlements_cache_clear()


@pytest.fixture
def account(transactional_db, catalog, backend):
    user = tier_services.user_create(email=f"sdk-{backend}@example.com")
    team = team_for_user(user=user)
    key, secret = services.api_key_create(team=team, name="sdk")
    return team, key, secret


def records_for(team, backend: str) -> int:
    if backend == "redis":
        from usage.quotas.redis import drain_usage_stream

        drain_usage_stream(batch_size=1000)
    return UsageRecord.objects.filter(team=team).count()


def llama(live_server, secret):
    return llama_api_client.LlamaAPIClient(api_key=secret, base_url=f"{live_server.url}/v1", max_retries=0, timeout=20)


def oai(live_server, secret):
    return openai.OpenAI(api_key=secret, base_url=f"{live_server.url}/compat/v1", max_retries=0, timeout=20)


def test_llama_client_models_chat_stream_and_errors(live_server, account, backend):
    team, _, secret = account
    client = llama(live_server, secret)
    assert [m.id for m in client.models.list()] == [SMALL]

    response = client.chat.completions.create(
        model=SMALL, messages=[{"role": "user", "content": "Describe alpacas."}], max_completion_tokens=40
    )
    assert response.completion_message.role == "assistant"
    assert response.completion_message.content.text
    metrics = {m.metric: m.value for m in response.metrics}
    assert 0 < metrics["num_completion_tokens"] <= 40

    streamed = ""
    kinds = []
    for chunk in client.chat.completions.create(
        model=SMALL, messages=[{"role": "user", "content": "Describe alpacas."}], max_completion_tokens=40, stream=True
    ):
        kinds.append(chunk.event.event_type)
        if chunk.event.delta.type == "text":
            streamed += chunk.event.delta.text
    assert streamed == response.completion_message.content.text
    assert kinds[0] == "start" and "complete" in kinds

    moderation = client.moderations.create(messages=[{"role": "user", "content": "I want to kill someone"}])
    assert moderation.results[0].flagged

    with pytest.raises(llama_api_client.PermissionDeniedError) as denied:
        client.chat.completions.create(model=BIG, messages=[{"role": "user", "content": "hi"}])
    assert denied.value.body["error"]["code"] == "model_not_allowed"  # the llama client keeps the whole body
    with pytest.raises(llama_api_client.AuthenticationError):
        llama(live_server, "tl-" + "x" * 45).models.list()
    assert records_for(team, backend) == 3  # two chats and the moderation; refusals are not recorded


def test_openai_client_models_chat_stream_and_errors(live_server, account, backend):
    team, _, secret = account
    client = oai(live_server, secret)
    assert [m.id for m in client.models.list()] == [SMALL]
    completion = client.chat.completions.create(
        model=SMALL, messages=[{"role": "user", "content": "Name three camelids."}], max_tokens=5
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5
    raw = client.chat.completions.with_raw_response.create(model=SMALL, messages=[{"role": "user", "content": "hi"}])
    assert int(raw.headers["x-ratelimit-remaining-requests"]) == 8  # free tier: 10 per minute, third request
    assert "x-ratelimit-limit-tokens" in raw.headers

    stream = client.chat.completions.create(
        model=SMALL,
        messages=[{"role": "user", "content": "Name three camelids."}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == completion.choices[0].message.content
    )
    assert chunks[-1].usage.completion_tokens == 5

    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model=BIG, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        oai(live_server, "tl-" + "y" * 45).models.list()
    assert unauthorized.value.code == "invalid_api_key"

    # Burn the rest of the free tier's 10 requests per minute (3 chats so far), then a typed 429.
    for _ in range(7):
        client.chat.completions.create(model=SMALL, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model=SMALL, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    assert limited.value.code == "rate_limit_exceeded"
    assert int(limited.value.response.headers["Retry-After"]) >= 1
    assert records_for(team, backend) == 10


def test_llama_client_raises_rate_limit_error_on_exhausted_quota(live_server, account, backend):
    _, _, secret = account
    tier = Tier.objects.get(slug="free")
    Tier.objects.filter(pk=tier.pk).update(monthly_tokens=50)
    entitlements_cache_clear()
    client = llama(live_server, secret)
    client.chat.completions.create(model=SMALL, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=10)
    with pytest.raises(llama_api_client.RateLimitError) as exhausted:
        client.chat.completions.create(
            model=SMALL, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=100
        )
    assert exhausted.value.body["error"]["code"] == "insufficient_quota"


def test_fifty_parallel_requests_racing_for_ten_admit_exactly_ten(live_server, account, backend):
    team, _, secret = account
    tier = Tier.objects.create(slug="ten-a-day", name="Ten a day", is_paid=False, price_cents=0, requests_per_day=10)
    tier.allowed_models.set(Tier.objects.get(slug="free").allowed_models.all())
    Subscription.objects.filter(team=team).update(tier=tier)
    entitlements_cache_clear()

    def call(i: int) -> int:
        response = httpx.post(
            f"{live_server.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            json={
                "model": SMALL,
                "messages": [{"role": "user", "content": f"request {i}"}],
                "max_completion_tokens": 8,
            },
            timeout=60,
        )
        return response.status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(call, range(50)))
    assert statuses.count(200) == 10 and statuses.count(429) == 40
    assert records_for(team, backend) == 10
    limits = limits_for(entitlements=entitlements_for_team(team_id=team.pk), now=timezone.now())
    used = get_quota_backend().used(team_id=team.pk, limits=limits)
    assert used[LimitName.REQUESTS_PER_DAY] == 10
    assert used[LimitName.MONTHLY_TOKENS] == sum(
        UsageRecord.objects.filter(team=team).values_list("total_tokens", flat=True)
    )


def _poll(check, *, seconds: float) -> float:
    """Seconds until ``check()`` is true; fails after ``seconds``."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if check():
            return time.monotonic() - started
        time.sleep(0.2)
    pytest.fail(f"not true within {seconds} s")


@pytest.mark.parametrize("backend", ["database"], indirect=True)
def test_tier_change_and_revocation_take_effect_within_seconds(live_server, account, settings):
    team, key, secret = account
    client = oai(live_server, secret)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model=BIG, messages=[{"role": "user", "content": "hi"}], max_tokens=1)

    Subscription.objects.filter(team=team).update(tier=Tier.objects.get(slug="pro"))

    def big_model_works() -> bool:
        try:
            client.chat.completions.create(model=BIG, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
            return True
        except openai.PermissionDeniedError:
            return False

    waited = _poll(big_model_works, seconds=settings.TIERLAB_AUTH_CACHE_SECONDS + 5)
    assert waited <= settings.TIERLAB_AUTH_CACHE_SECONDS + 1

    from rest_framework.test import APIClient

    # Revoking through the account API needs a key with the manage scope (the SDK's key has model + read).
    _, manage_secret = services.api_key_create(team=team, name="ops", scopes=["model", "read", "manage"])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {manage_secret}")
    assert api.delete(f"/api/v1/keys/{key.pk}").json()["status"] == "revoked"

    def key_refused() -> bool:
        try:
            client.models.list()
            return False
        except openai.AuthenticationError:
            return True

    waited = _poll(key_refused, seconds=settings.TIERLAB_AUTH_CACHE_SECONDS + 5)
    assert waited <= settings.TIERLAB_AUTH_CACHE_SECONDS + 1
