"""Issue 11, findings 2 and 3, over HTTP.

2. API key scopes: a key reads the account API (``read``) and calls the model API (``model``) by
   default; every write needs ``manage``; a key never mints a key with more scopes than its own; only
   owners and admins grant ``manage`` from a session. Refusal: 403 ``insufficient_scope``.
3. The account API's abuse throttle counts per key and per team (not one bucket for every key), and
   its counter is atomic: N + k requests against a limit of N get exactly N answers.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from io import StringIO

import httpx
import pytest
from django.core.management import call_command
from django.test import Client

from accounts import services, throttling
from accounts.models import ApiKey, Membership
from accounts.selectors import api_key_authenticate, api_key_cache_clear, team_for_user
from core.invalidation import cache_invalidations_poll
from tiers import services as tier_services
from tiers.selectors import subscription_current

SMALL = "Llama-3.3-8B-Instruct"
ALL = ["model", "read", "manage"]


def key_client(secret: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {secret}")


def put_json(client: Client, path: str, body: dict):
    return client.put(path, json.dumps(body), content_type="application/json")


def post_json(client: Client, path: str, body: dict):
    return client.post(path, json.dumps(body), content_type="application/json")


def assert_insufficient_scope(response) -> None:
    assert response.status_code == 403, response.content
    error = response.json()["error"]
    assert error["code"] == "insufficient_scope" and error["type"] == "permission_error"
    assert set(error) >= {"message", "type", "code", "param"}


@pytest.fixture
def owner(catalog):
    user = tier_services.user_create(email="owner@example.com")
    return user, team_for_user(user=user)


@pytest.fixture
def other_team(catalog):
    user = tier_services.user_create(email="other@example.com")
    return user, team_for_user(user=user)


# --- Finding 2: scopes ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_default_key_reads_but_cannot_write_anything(owner):
    user, team = owner
    owners_key, _ = services.api_key_create(team=team, name="owner's", created_by=user, scopes=ALL)
    key, secret = services.api_key_create(team=team, name="app")
    assert key.scopes == ["model", "read"]
    client = key_client(secret)

    for path in ("/api/v1/me", "/api/v1/keys", "/api/v1/subscription", "/api/v1/usage", "/api/v1/invoices"):
        assert client.get(path).status_code == 200, path

    assert_insufficient_scope(put_json(client, "/api/v1/subscription/spend-cap", {"amount_cents": None}))
    assert_insufficient_scope(post_json(client, "/api/v1/subscription", {"tier": "pro"}))
    assert_insufficient_scope(post_json(client, "/api/v1/subscription", {"cancel": True}))
    assert_insufficient_scope(post_json(client, "/api/v1/keys", {"name": "minted"}))
    assert_insufficient_scope(client.delete(f"/api/v1/keys/{owners_key.pk}"))
    assert_insufficient_scope(post_json(client, "/api/v1/mau", {"month": "2026-10", "active_users": 1}))
    assert_insufficient_scope(client.post("/api/v1/license/request"))

    owners_key.refresh_from_db()
    assert owners_key.revoked_at is None
    assert ApiKey.objects.filter(team=team).count() == 2
    assert subscription_current(team=team).tier.slug == "free"


@pytest.mark.django_db
def test_a_manage_key_may_write(owner):
    _, team = owner
    _, secret = services.api_key_create(team=team, name="ops", scopes=ALL)
    victim, _ = services.api_key_create(team=team, name="old")
    client = key_client(secret)

    created = post_json(client, "/api/v1/keys", {"name": "minted"})
    assert created.status_code == 201 and created.json()["scopes"] == ["model", "read"]
    assert client.delete(f"/api/v1/keys/{victim.pk}").status_code == 200
    victim.refresh_from_db()
    assert victim.revoked_at is not None
    assert put_json(client, "/api/v1/subscription/spend-cap", {"amount_cents": None}).status_code == 200


@pytest.mark.django_db
def test_a_minted_key_cannot_revoke_the_owners_key(owner):
    user, team = owner
    owners_key, owners_secret = services.api_key_create(team=team, name="owner's", created_by=user, scopes=ALL)
    minted = post_json(key_client(owners_secret), "/api/v1/keys", {"name": "minted"}).json()
    assert minted["scopes"] == ["model", "read"]
    assert_insufficient_scope(key_client(minted["secret"]).delete(f"/api/v1/keys/{owners_key.pk}"))
    owners_key.refresh_from_db()
    assert owners_key.status == "active"


@pytest.mark.django_db
def test_a_key_never_mints_a_key_with_more_scopes_than_its_own(owner):
    _, team = owner
    _, secret = services.api_key_create(team=team, name="admin only", scopes=["read", "manage"])
    client = key_client(secret)
    assert_insufficient_scope(post_json(client, "/api/v1/keys", {"name": "x", "scopes": ["model"]}))
    # The default (model + read) is more than this key has, too.
    assert_insufficient_scope(post_json(client, "/api/v1/keys", {"name": "x"}))
    created = post_json(client, "/api/v1/keys", {"name": "reader", "scopes": ["read"]})
    assert created.status_code == 201 and created.json()["scopes"] == ["read"]
    same = post_json(client, "/api/v1/keys", {"name": "twin", "scopes": ["manage", "read"]})
    assert same.status_code == 201 and same.json()["scopes"] == ["read", "manage"]
    assert ApiKey.objects.filter(team=team).count() == 3


@pytest.mark.django_db
def test_unknown_or_empty_scopes_are_400_naming_scopes(owner):
    _, team = owner
    _, secret = services.api_key_create(team=team, name="ops", scopes=ALL)
    for scopes in (["model", "admin"], [], "manage"):
        response = post_json(key_client(secret), "/api/v1/keys", {"name": "x", "scopes": scopes})
        assert response.status_code == 400, scopes
        assert response.json()["error"]["param"] == "scopes"
    assert ApiKey.objects.filter(team=team).count() == 1


@pytest.mark.django_db
def test_sessions_grant_manage_only_as_owner_or_admin(owner):
    user, team = owner
    member = tier_services.user_create(email="member@example.com")
    Membership.objects.filter(user=member).delete()  # a member of the owner's team only
    membership = Membership.objects.create(user=member, team=team, role=Membership.Role.MEMBER)
    session = Client()
    session.force_login(member)
    assert_insufficient_scope(post_json(session, "/api/v1/keys", {"name": "x", "scopes": ALL}))
    assert post_json(session, "/api/v1/keys", {"name": "plain"}).status_code == 201

    membership.role = Membership.Role.ADMIN
    membership.save()
    assert post_json(session, "/api/v1/keys", {"name": "by admin", "scopes": ALL}).json()["scopes"] == ALL
    session.force_login(user)
    assert post_json(session, "/api/v1/keys", {"name": "by owner", "scopes": ALL}).json()["scopes"] == ALL


@pytest.mark.django_db
def test_keys_page_offers_manage_to_owners_only_and_lists_scopes(owner):
    user, team = owner
    page = Client()
    page.force_login(user)
    assert 'value="manage"' in page.get("/keys/").content.decode()
    page.post("/keys/", {"name": "ops", "scopes": ["read", "manage"]})
    assert ApiKey.objects.get(name="ops").scopes == ["read", "manage"]
    assert "read, manage" in page.get("/keys/").content.decode()

    member = tier_services.user_create(email="member@example.com")
    Membership.objects.filter(user=member).delete()
    Membership.objects.create(user=member, team=team, role=Membership.Role.MEMBER)
    page.force_login(member)
    assert 'value="manage"' not in page.get("/keys/").content.decode()
    response = page.post("/keys/", {"name": "sneaky", "scopes": ["manage"]})
    assert response.status_code == 400 and not ApiKey.objects.filter(name="sneaky").exists()


@pytest.mark.django_db
def test_the_model_api_needs_the_model_scope(owner):
    _, team = owner
    _, reader = services.api_key_create(team=team, name="reader", scopes=["read", "manage"])
    _, default = services.api_key_create(team=team, name="app")
    body = json.dumps({"model": SMALL, "messages": [{"role": "user", "content": "Hi"}]})
    for path in ("/v1/chat/completions", "/compat/v1/chat/completions"):
        assert_insufficient_scope(key_client(reader).post(path, body, content_type="application/json"))
        assert key_client(default).post(path, body, content_type="application/json").status_code == 200
    for path in ("/v1/models", "/compat/v1/models"):
        assert_insufficient_scope(key_client(reader).get(path))
        assert key_client(default).get(path).status_code == 200
    assert key_client(reader).get("/api/v1/me").status_code == 200  # the account API still answers


@pytest.mark.django_db
def test_scopes_come_with_the_cached_key_at_no_extra_query(owner, django_assert_num_queries):
    _, team = owner
    _, secret = services.api_key_create(team=team, name="reader", scopes=["read"])
    api_key_cache_clear()
    cache_invalidations_poll(force=True)  # the invalidation feed's read, once a second: not due below
    with django_assert_num_queries(1):
        key = api_key_authenticate(raw_key=secret)
    assert key.scopes == frozenset({"read"}) and not key.has_scope("model")
    with django_assert_num_queries(0):
        assert api_key_authenticate(raw_key=secret).scopes == frozenset({"read"})


@pytest.mark.django_db
def test_create_api_key_command_takes_scopes(catalog):
    out = StringIO()
    call_command(
        "create_api_key", "--email", "cli@example.com", "--name", "ops", "--scopes", "model,read,manage", stdout=out
    )
    secret = out.getvalue().strip().splitlines()[-1]
    assert api_key_authenticate(raw_key=secret).scopes == frozenset(ALL)
    call_command("create_api_key", "--email", "cli@example.com", "--name", "plain", stdout=StringIO())
    assert ApiKey.objects.get(name="plain").scopes == ["model", "read"]
    with pytest.raises(Exception, match="model, read and manage"):
        call_command(
            "create_api_key", "--email", "cli@example.com", "--name", "bad", "--scopes", "root", stdout=StringIO()
        )


# --- Finding 3: the account API's throttle --------------------------------------------------------------


@pytest.fixture(params=["cache", "database"])
def counter(request, monkeypatch):
    """Both counters: the cache's atomic incr (LocMem here, Redis in production) and the database upsert
    used with the embedded default cache."""
    if request.param == "database":
        monkeypatch.setattr(throttling, "ATOMIC_INCR_CACHES", frozenset())
    return request.param


def rates(settings, **rates):
    # Per-day windows: a test never straddles a window's end (the minute's would, now and then).
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"api_key": "1000/day", "team": "1000/day", "user": "1000/day", "anon": "1000/day"}
        | rates,
    }


@pytest.mark.django_db
def test_one_teams_key_exhausting_its_bucket_leaves_another_team_alone(owner, other_team, settings, counter):
    rates(settings, api_key="5/day")
    _, a_secret = services.api_key_create(team=owner[1], name="a")
    _, b_secret = services.api_key_create(team=other_team[1], name="b")
    a, b = key_client(a_secret), key_client(b_secret)
    assert [a.get("/api/v1/me").status_code for _ in range(5)] == [200] * 5
    refused = a.get("/api/v1/me")
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert [b.get("/api/v1/me").status_code for _ in range(5)] == [200] * 5


@pytest.mark.django_db
def test_a_teams_keys_share_the_team_bucket(owner, other_team, settings, counter):
    rates(settings, team="6/day")
    secrets = [services.api_key_create(team=owner[1], name=f"k{n}")[1] for n in range(3)]
    statuses = [key_client(secrets[n % 3]).get("/api/v1/keys").status_code for n in range(9)]
    assert statuses == [200] * 6 + [429] * 3
    _, b_secret = services.api_key_create(team=other_team[1], name="b")
    assert key_client(b_secret).get("/api/v1/keys").status_code == 200


@pytest.mark.django_db
def test_sequential_requests_are_counted_exactly(owner, settings, counter):
    rates(settings, api_key="20/day")
    _, secret = services.api_key_create(team=owner[1], name="a")
    client = key_client(secret)
    statuses = [client.get("/api/v1/me").status_code for _ in range(27)]
    assert statuses.count(200) == 20 and statuses.count(429) == 7 and statuses[:20] == [200] * 20


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_never_pass_the_limit(live_server, catalog, settings, counter):
    limit, extra = 15, 25
    rates(settings, api_key=f"{limit}/day")
    user = tier_services.user_create(email="racer@example.com")
    _, secret = services.api_key_create(team=team_for_user(user=user), name="racer")

    def call(_):
        response = httpx.get(f"{live_server.url}/api/v1/me", headers={"Authorization": f"Bearer {secret}"}, timeout=30)
        return response.status_code

    with ThreadPoolExecutor(max_workers=limit + extra) as pool:
        statuses = list(pool.map(call, range(limit + extra)))
    assert statuses.count(200) == limit and statuses.count(429) == extra, statuses


def test_throttle_counters_idle_for_a_day_are_pruned(db, settings):
    """The database counters (embedded default) kept one row per caller forever; the hourly task drops
    rows whose window ended over a day ago and keeps current ones."""
    from accounts.models import ApiThrottleCounter
    from accounts.tasks import throttle_counters_prune_task

    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"api_key": "600/min", "team": "1200/min", "user": "600/min", "anon": "60/min"},
    }
    now = 1_800_000_000.0
    day_ago = now - 86_400 - 120
    for bucket, when in [("key:1", now), ("key:2", day_ago), ("team:1", now - 3600), ("anon:10.0.0.1", day_ago)]:
        throttling._database_counter_hit(bucket, int(when // 60))  # the embedded default's counter
    assert throttling.throttle_counters_prune(now=now) == 2
    assert set(ApiThrottleCounter.objects.values_list("bucket", flat=True)) == {"key:1", "team:1"}
    assert throttle_counters_prune_task.run() == 0  # now = the real clock: nothing left is a day old
