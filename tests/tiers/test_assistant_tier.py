"""The Assistant tier (issue 15): a paid consumer tier for the playground only. Its teams chat and are
metered like everyone, but get no API keys, from any door, and the model API refuses keys they had."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from accounts import services as account_services
from accounts.models import ApiKey, User
from accounts.selectors import team_for_user
from tiers import catalog as seed
from tiers import services as tier_services
from tiers.models import Tier
from usage.models import UsageRecord

SMALL = "Llama-3.3-8B-Instruct"


@pytest.fixture(autouse=True)
def _no_pacing(settings):
    settings.TIERLAB_PLAYGROUND_STREAM_DELAY_SECONDS = 0


@pytest.fixture
def subscriber(catalog):
    user = tier_services.user_create(email="amy@example.com", password="pw-Assistant-2026", tier_slug="assistant")
    client = Client()
    client.force_login(user)
    return user, team_for_user(user=user), client


def test_the_seed_has_a_paid_playground_only_assistant_tier_and_the_others_include_the_api(catalog):
    assistant = catalog[seed.ASSISTANT_TIER_SLUG]
    assert assistant.is_paid and assistant.price_cents > 0 and assistant.billing_interval == "month"
    assert assistant.is_public and not assistant.includes_api_access
    assert assistant.requests_per_day  # the daily message limit
    assert [slug for slug, tier in catalog.items() if not tier.includes_api_access] == ["assistant"]


def test_the_pricing_page_and_the_tiers_api_say_which_tiers_include_api_access(client, catalog):
    html = client.get("/pricing/").content.decode()
    assert 'data-tier="assistant"' in html
    card = html[html.index('data-tier="assistant"') : html.index('data-tier="plus"')]
    assert 'data-api-access="no"' in card and "Playground only" in card and "Messages per day" in card
    plus = html[html.index('data-tier="plus"') :]
    assert 'data-api-access="yes"' in plus[: plus.index("</article>")]
    tiers = {tier["slug"]: tier for tier in client.get("/api/v1/tiers").json()["results"]}
    assert tiers["assistant"]["includes_api_access"] is False and tiers["pro"]["includes_api_access"] is True


def test_the_admin_shows_and_edits_api_access(client, catalog):
    operator = User.objects.create_superuser(email="op@example.com", password="pw-Operator-1")
    client.force_login(operator)
    listing = client.get("/admin/tiers/tier/").content.decode()
    assert "includes API access" in listing or "Includes API access" in listing
    form = client.get(f"/admin/tiers/tier/{catalog['assistant'].pk}/change/").content.decode()
    assert 'name="includes_api_access"' in form


def test_an_assistant_subscriber_chats_in_the_playground_up_to_the_daily_message_limit(subscriber):
    _, team, client = subscriber
    Tier.objects.filter(slug="assistant").update(requests_per_day=1)

    def send(message):
        return client.post(
            "/playground/chat/", json.dumps({"model": SMALL, "message": message}), content_type="application/json"
        )

    response = send("Plan my week")
    assert response.status_code == 200
    events = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    assert events[-1]["type"] == "done"
    assert {limit["label"]: limit["remaining"] for limit in events[-1]["limits"]}["Messages today"] == 0
    refused = send("And the next one")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert UsageRecord.objects.filter(team=team, api_key__isnull=True).count() == 1


def test_the_keys_page_says_no_and_creates_nothing(subscriber):
    _, _, client = subscriber
    page = client.get("/keys/")
    html = page.content.decode()
    assert page.status_code == 200 and 'id="api-access-refused"' in html and 'id="create-key-form"' not in html
    assert "does not include API access" in html
    response = client.post("/keys/", {"name": "sneaky"})
    assert response.status_code == 403 and "does not include API access" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_the_account_api_refuses_a_key_with_the_code(subscriber):
    _, _, client = subscriber
    response = client.post("/api/v1/keys", {"name": "sneaky"}, content_type="application/json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "api_access_not_included"
    assert not ApiKey.objects.exists()


def test_the_create_api_key_command_refuses_and_leaves_no_user_behind(catalog):
    with pytest.raises(CommandError, match="does not include API access"):
        call_command("create_api_key", "--email", "new@example.com", "--name", "cron", "--tier", "assistant")
    assert not User.objects.filter(email="new@example.com").exists() and not ApiKey.objects.exists()


def test_the_model_api_refuses_keys_a_team_had_before_moving_to_the_assistant_tier(catalog):
    user = tier_services.user_create(email="mover@example.com", tier_slug="plus")
    team = team_for_user(user=user)
    _, secret = account_services.api_key_create(team=team, name="old app", created_by=user)
    api = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    body = json.dumps({"model": SMALL, "messages": [{"role": "user", "content": "hi"}]})
    assert api.post("/v1/chat/completions", body, content_type="application/json").status_code == 200

    team.subscriptions.update(tier=catalog["assistant"])
    from tiers.selectors import entitlements_cache_clear

    entitlements_cache_clear()  # a tier change is seen within TIERLAB_AUTH_CACHE_SECONDS
    for path in ("/v1/chat/completions", "/compat/v1/chat/completions"):
        response = api.post(path, body, content_type="application/json")
        assert response.status_code == 403, path
        error = response.json()["error"]
        assert error["code"] == "api_access_not_included" and "playground" in error["message"]
    assert api.get("/v1/models").json()["error"]["code"] == "api_access_not_included"
    assert UsageRecord.objects.count() == 1
