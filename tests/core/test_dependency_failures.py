"""When a dependency fails, every API answers 503 with Retry-After in its own JSON error shape, pages a
short 503 page, and /healthz answers 503 naming the part (issue 12, item 7).

The failures are real ones, not patched functions: the ``default`` database connection is replaced,
for the request only, by one that really fails (SQLite: a file in a folder that does not exist, or the
test database opened read-only; PostgreSQL: a closed port, or the test database with
``default_transaction_read_only``); the cache is a Redis on a closed port; the disk threshold is raised
above the free space.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection, connections
from django.db.utils import ConnectionHandler

from accounts.selectors import team_for_user
from accounts.services import api_key_create
from core.dependencies import RETRY_AFTER_SECONDS
from tests.helpers_celery import closed_loopback_port
from tiers import services as tier_services

API_PATHS = ("/api/v1/me", "/api/v1/tiers", "/api/v1/usage")


@pytest.fixture
def key(catalog):
    user = tier_services.user_create(email="ops@example.com", password="ops-password-123")
    _, secret = api_key_create(team=team_for_user(user=user), name="ops", scopes=["model", "read", "manage"])
    return secret


def _settings_unreachable(tmp_path: Path) -> dict:
    if connection.vendor == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "missing" / "db.sqlite3")}
    settings_dict = dict(connection.settings_dict)
    settings_dict.update(HOST="127.0.0.1", PORT=str(closed_loopback_port()), OPTIONS={"connect_timeout": 2})
    return settings_dict


def _settings_read_only() -> dict:
    """The test database itself (its committed rows: use with transactional_db), opened read-only."""
    settings_dict = dict(connection.settings_dict)
    if connection.vendor == "sqlite":
        # SQLite's own read-only mode: the same refusal as a file without write permission, which root
        # (CI) would not get. No init_command: it sets the journal mode, a write.
        settings_dict["NAME"] = f"file:{Path(settings_dict['NAME']).resolve()}?mode=ro"
        settings_dict["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 5}
    else:
        options = dict(settings_dict.get("OPTIONS") or {})
        options["options"] = "-c default_transaction_read_only=on"
        settings_dict["OPTIONS"] = options
    return settings_dict


@contextlib.contextmanager
def default_database(settings_dict: dict) -> Iterator[None]:
    """Make ``default`` (django.db.connection) a connection with ``settings_dict`` inside the block."""
    replacement = ConnectionHandler({"default": settings_dict})["default"]
    original = connections["default"]
    connections["default"] = replacement
    try:
        yield
    finally:
        connections["default"] = original
        replacement.close()


def assert_unavailable(response, code: str) -> dict:
    assert response.status_code == 503, response.content[:500]
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    assert response["Retry-After"] == str(RETRY_AFTER_SECONDS)
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["code"] == code
    assert body["error"]["type"] == "server_error"
    return body


def healthz_failing(client) -> dict:
    response = client.get("/healthz")
    assert response.status_code == 503, response.content
    return response.json()


# --- The database ---------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("path", API_PATHS)
def test_account_api_is_503_when_the_database_is_unreachable(client, key, tmp_path, settings, path):
    settings.DEBUG = True  # no debug page either: it was what /api/v1/me answered with var/ read-only
    with default_database(_settings_unreachable(tmp_path)):
        response = client.get(path, HTTP_AUTHORIZATION=f"Bearer {key}")

    assert_unavailable(response, "database_unavailable")


@pytest.mark.django_db
def test_healthz_names_the_database_when_it_is_unreachable(client, tmp_path):
    with default_database(_settings_unreachable(tmp_path)):
        body = healthz_failing(client)

    assert "database" in body["failing"]
    assert body["checks"]["database"]["status"] == "error"
    assert body["checks"]["database"]["error"].startswith("OperationalError")


@pytest.mark.django_db(transaction=True)
def test_account_api_reads_on_a_read_only_database_and_writes_are_503(client, key):
    with default_database(_settings_read_only()):
        read = client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {key}")
        write = client.post(
            "/api/v1/keys", {"name": "another"}, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
        )

    assert read.status_code == 200, read.content  # reads are still served
    assert_unavailable(write, "database_unavailable")


@pytest.mark.django_db(transaction=True)
def test_healthz_names_the_database_when_it_is_read_only(client):
    with default_database(_settings_read_only()):
        body = healthz_failing(client)

    assert body["failing"] == ["database"]
    error = body["checks"]["database"]["error"].lower()
    assert "readonly" in error or "read-only" in error, error


@pytest.mark.django_db
def test_a_page_is_a_503_page_not_a_debug_page_when_the_database_is_unreachable(client, tmp_path, settings):
    settings.DEBUG = True
    with default_database(_settings_unreachable(tmp_path)):
        response = client.get("/pricing/")

    assert response.status_code == 503
    assert response["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert b"briefly unavailable" in response.content
    assert b"Traceback" not in response.content


@pytest.mark.django_db
def test_model_api_answers_its_json_error_shape_when_the_database_is_unreachable(client, key, tmp_path):
    with default_database(_settings_unreachable(tmp_path)):
        response = client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}")

    assert response.status_code >= 500
    assert response["Content-Type"].startswith("application/json")
    assert set(response.json()["error"]) == {"message", "type", "code", "param"}


@pytest.mark.django_db
def test_model_api_is_503_when_the_database_is_unreachable(client, key, tmp_path):
    with default_database(_settings_unreachable(tmp_path)):
        response = client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}")

    assert_unavailable(response, "database_unavailable")


# --- The cache ------------------------------------------------------------------------------------------


@pytest.fixture
def cache_down(settings):
    """The shared cache is a Redis nothing answers at (production's cache is Redis)."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{closed_loopback_port()}/0",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }


@pytest.mark.django_db
@pytest.mark.parametrize("path", API_PATHS)
def test_account_api_is_503_when_the_cache_is_down(client, key, cache_down, path):
    # The account API's throttle counts every request in the cache.
    response = client.get(path, HTTP_AUTHORIZATION=f"Bearer {key}")

    assert_unavailable(response, "cache_unavailable")


@pytest.mark.django_db
def test_healthz_names_the_cache_when_it_is_down(client, cache_down):
    body = healthz_failing(client)

    assert body["failing"] == ["cache"]
    assert "ConnectionError" in body["checks"]["cache"]["error"]
    assert body["checks"]["database"]["status"] == "ok"


# --- The disk -------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_healthz_names_the_disk_below_the_threshold(client, settings):
    body = client.get("/healthz").json()
    if "disk" not in body["checks"]:
        pytest.skip("no embedded part on disk here (PostgreSQL and a network broker): the disk check is off")
    assert body["checks"]["disk"]["status"] == "ok", body["checks"]["disk"]
    settings.TIERLAB_HEALTHZ_MIN_FREE_DISK_MB = 1024 * 1024 * 1024  # an exabyte: more than any disk has free

    body = healthz_failing(client)

    assert body["failing"] == ["disk"]
    assert "below the" in body["checks"]["disk"]["error"]
    assert "TIERLAB_HEALTHZ_MIN_FREE_DISK_MB" in body["checks"]["disk"]["error"]


# --- Anything else ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_bug_under_the_api_is_a_json_500_even_in_debug_mode(client, key, settings, monkeypatch):
    from tiers.api import MeApi

    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not an outage")

    monkeypatch.setattr(MeApi, "get", broken)
    settings.DEBUG = True

    response = client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {key}")

    assert response.status_code == 500
    assert response["Content-Type"].startswith("application/json")
    assert "Retry-After" not in response
    assert response.json()["error"] == {
        "message": "Internal error.",
        "type": "server_error",
        "code": "internal_error",
        "param": None,
    }
