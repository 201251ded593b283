"""API keys: creation, hashing, authentication, revocation, and team isolation on the API and pages."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import services
from accounts.models import ApiKey, User
from accounts.selectors import api_key_authenticate, api_key_cache_clear, team_for_user
from tiers import services as tier_services


@pytest.fixture(autouse=True)
def _fresh_key_cache():
    api_key_cache_clear()
    yield
    api_key_cache_clear()


@pytest.fixture
def alice(catalog):
    return tier_services.user_create(email="alice@example.com", password="alice-password-123")


@pytest.fixture
def bob(catalog):
    return tier_services.user_create(email="bob@example.com", password="bob-password-1234")


@pytest.mark.django_db
def test_key_is_high_entropy_prefixed_and_stored_only_as_a_hash(alice):
    team = team_for_user(user=alice)
    key, secret = services.api_key_create(team=team, name="backend", created_by=alice)
    assert secret.startswith("tl-") and len(secret) >= 40
    assert key.prefix == secret[: services.API_KEY_PREFIX_LENGTH]
    assert key.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    stored = ApiKey.objects.filter(pk=key.pk).values()[0]
    assert secret not in {str(v) for v in stored.values()}
    other_key, other_secret = services.api_key_create(team=team, name="backend")
    assert other_secret != secret and other_key.prefix != key.prefix


@pytest.mark.django_db
def test_authenticate_accepts_only_the_exact_live_key(alice):
    team = team_for_user(user=alice)
    key, secret = services.api_key_create(team=team, name="k")
    found = api_key_authenticate(raw_key=secret)
    assert (found.key_id, found.team_id) == (key.pk, team.pk)
    assert api_key_authenticate(raw_key=secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert api_key_authenticate(raw_key="tl-short") is None
    assert api_key_authenticate(raw_key="sk-" + secret[3:]) is None

    services.api_key_revoke(key=key)
    api_key_cache_clear()
    assert api_key_authenticate(raw_key=secret) is None


@pytest.mark.django_db
def test_expired_key_is_refused(alice):
    team = team_for_user(user=alice)
    _, secret = services.api_key_create(team=team, name="k", expires_at=timezone.now() + timedelta(hours=1))
    assert api_key_authenticate(raw_key=secret) is not None
    assert api_key_authenticate(raw_key=secret, now=timezone.now() + timedelta(hours=2)) is None


@pytest.mark.django_db
def test_key_needs_a_name_and_a_future_expiry(alice):
    team = team_for_user(user=alice)
    with pytest.raises(services.ApiKeyError):
        services.api_key_create(team=team, name="  ")
    with pytest.raises(services.ApiKeyError):
        services.api_key_create(team=team, name="k", expires_at=timezone.now() - timedelta(seconds=1))
    assert not ApiKey.objects.exists()


@pytest.mark.django_db
def test_keys_api_create_list_revoke_with_session(alice):
    client = APIClient()
    client.force_login(alice)
    response = client.post("/api/v1/keys", {"name": "ci"}, format="json")
    assert response.status_code == 201
    secret = response.json()["secret"]
    key_id = response.json()["id"]
    listed = client.get("/api/v1/keys").json()
    assert listed["count"] == 1 and "secret" not in listed["results"][0]
    assert listed["results"][0]["status"] == "active"
    response = client.delete(f"/api/v1/keys/{key_id}")
    assert response.status_code == 200 and response.json()["status"] == "revoked"
    api_key_cache_clear()
    assert api_key_authenticate(raw_key=secret) is None


@pytest.mark.django_db
def test_keys_api_with_an_api_key_and_error_shapes(alice):
    _, secret = services.api_key_create(
        team=team_for_user(user=alice), name="automation", scopes=["model", "read", "manage"]
    )
    client = APIClient()
    assert client.get("/api/v1/keys").status_code in (401, 403)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/api/v1/keys").json()["count"] == 1
    me = client.get("/api/v1/me").json()
    assert me["team"]["name"] == "alice@example.com's team" and me["subscription"]["tier"] == "free"

    response = client.post("/api/v1/keys", {"name": ""}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "name"

    client.credentials(HTTP_AUTHORIZATION="Bearer tl-not-a-real-key-at-all-0000000000")
    response = client.get("/api/v1/keys")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.django_db
def test_one_team_never_sees_or_revokes_another_teams_keys(alice, bob):
    alice_key, _ = services.api_key_create(team=team_for_user(user=alice), name="alice-secret-app")
    client = APIClient()
    client.force_login(bob)
    assert client.get("/api/v1/keys").json()["count"] == 0
    assert client.get(f"/api/v1/keys/{alice_key.pk}").status_code == 404
    assert client.delete(f"/api/v1/keys/{alice_key.pk}").status_code == 404
    alice_key.refresh_from_db()
    assert alice_key.revoked_at is None

    _, bob_secret = services.api_key_create(
        team=team_for_user(user=bob), name="bob-app", scopes=["model", "read", "manage"]
    )
    key_client = APIClient()
    key_client.credentials(HTTP_AUTHORIZATION=f"Bearer {bob_secret}")
    assert key_client.delete(f"/api/v1/keys/{alice_key.pk}").status_code == 404
    assert [k["name"] for k in key_client.get("/api/v1/keys").json()["results"]] == ["bob-app"]


@pytest.mark.django_db
def test_keys_page_shows_secret_once_and_isolates_teams(client, alice, bob):
    client.force_login(alice)
    response = client.post(reverse("keys"), {"name": "web-app"}, follow=True)
    page = response.content.decode()
    key = ApiKey.objects.get(name="web-app")
    secret_in_page = page.split('id="new-key-secret">', 1)[1].split("<", 1)[0]
    assert hashlib.sha256(secret_in_page.encode()).hexdigest() == key.secret_hash
    again = client.get(reverse("keys")).content.decode()
    assert secret_in_page not in again and key.prefix in again  # shown once, then only the prefix

    response = client.post(reverse("keys"), {"name": ""})
    assert response.status_code == 400 and "This field is required" in response.content.decode()

    client.force_login(bob)
    assert key.prefix not in client.get(reverse("keys")).content.decode()
    assert client.post(reverse("key-revoke", args=[key.pk])).status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None

    client.force_login(alice)
    client.post(reverse("key-revoke", args=[key.pk]))
    key.refresh_from_db()
    assert key.revoked_at is not None


@pytest.mark.django_db
def test_create_api_key_command_creates_user_team_and_prints_secret_last(capsys, catalog):
    call_command("create_api_key", "--email", "Script@Example.com", "--name", "cron", "--tier", "pro")
    out = capsys.readouterr().out.strip().splitlines()
    secret = out[-1]
    user = User.objects.get(email="script@example.com")
    team = team_for_user(user=user)
    assert team.subscriptions.get().tier.slug == "pro"
    assert api_key_authenticate(raw_key=secret).team_id == team.pk

    call_command("create_api_key", "--email", "script@example.com", "--name", "second")
    assert ApiKey.objects.filter(team=team).count() == 2 and User.objects.count() == 1


@pytest.mark.django_db
def test_create_api_key_command_bad_input_is_a_clear_error_and_changes_nothing(catalog):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="valid email"):
        call_command("create_api_key", "--email", "not-an-email", "--name", "x")
    with pytest.raises(CommandError, match="does not exist"):
        call_command("create_api_key", "--email", "new@example.com", "--name", "x", "--tier", "platinum")
    assert not User.objects.exists() and not ApiKey.objects.exists()


@pytest.mark.django_db
def test_last_used_time_moves_forward_when_the_key_is_used(alice, client):
    from usage import services as usage_services

    usage_services._key_marked_at.clear()
    key, secret = services.api_key_create(team=team_for_user(user=alice), name="k")
    assert key.last_used_at is None
    response = client.post(
        "/v1/chat/completions",
        {"model": "Llama-3.3-8B-Instruct", "messages": [{"role": "user", "content": "hi"}]},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 200
    key.refresh_from_db()
    assert key.last_used_at is not None and abs((timezone.now() - key.last_used_at).total_seconds()) < 30


@pytest.mark.django_db
def test_operator_revokes_a_key_in_the_admin_and_never_sees_a_secret(client, alice):
    key, secret = services.api_key_create(team=team_for_user(user=alice), name="leaked")
    tier_services.operator_ensure(email="ops@example.com", password="operator-password-1")
    client.login(email="ops@example.com", password="operator-password-1")
    page = client.get(reverse("admin:accounts_apikey_change", args=[key.pk])).content.decode()
    assert key.prefix in page and key.secret_hash not in page and secret not in page
    client.post(reverse("admin:accounts_apikey_changelist"), {"action": "revoke_keys", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert key.revoked_at is not None
