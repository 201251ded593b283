"""The embedded default with ``var/`` read-only (issue 12, item 7): the APIs answer their JSON error
shape (503 with Retry-After for the database), pages never show a debug page, and /healthz answers 503
naming the parts that cannot take writes.

Real processes: the test database is copied into a tmpfs mounted as ``var/``, the cache table added,
the tmpfs remounted read-only, and gunicorn serves the project from it with the embedded default's
settings (``config.settings``: DEBUG on, the database cache, the filesystem broker under ``var/``).
Root only (mount); SQLite only (the embedded default).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from django.db import connection

from accounts.selectors import team_for_user
from accounts.services import api_key_create
from core.dependencies import RETRY_AFTER_SECONDS
from tests.faults.servers_ops import BASE_DIR, gunicorn, tmpfs
from tiers import services as tier_services

pytestmark = pytest.mark.django_db(transaction=True)


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_apis_answer_json_and_healthz_names_the_parts_with_var_read_only(catalog, tmp_path, report):
    if connection.vendor != "sqlite":
        pytest.skip(
            "var/ holds the embedded default's SQLite database; PostgreSQL: tests/core/test_dependency_failures.py"
        )
    user = tier_services.user_create(email="readonly@example.com", password="readonly-password-1")
    _, secret = api_key_create(team=team_for_user(user=user), name="ro")

    with tmpfs(tmp_path / "var", "256m") as var:
        database = var / "db.sqlite3"
        source, copy = sqlite3.connect(connection.settings_dict["NAME"]), sqlite3.connect(database)
        try:
            source.backup(copy)
        finally:
            source.close()
            copy.close()  # a file open for writing would keep the remount below from going read-only
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "DJANGO_SETTINGS_MODULE": "config.settings",  # the embedded default, DEBUG on
            "DATABASE_URL": f"sqlite:///{database}",
            "CACHE_URL": "dbcache://tierlab_cache",
            "CELERY_BROKER_URL": "filesystem://",
            "CELERY_BROKER_DIR": str(var / "celery"),
            "TIERLAB_QUOTA_BACKEND": "database",
            "PYTHONUNBUFFERED": "1",
        }
        subprocess.run(
            [sys.executable, "manage.py", "createcachetable"], cwd=BASE_DIR, env=env, check=True, timeout=120,
            capture_output=True,
        )  # fmt: skip
        for folder in ("queue", "control", "processed"):
            (var / "celery" / folder).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-o", "remount,ro", str(var)], check=True, timeout=30)

        with gunicorn(env, tmp_path / "web", ready_path="/healthz", ready_status=None) as web:
            auth = {"Authorization": f"Bearer {secret}"}
            me = _get(web.port, "/api/v1/me", auth)
            models = _get(web.port, "/v1/models", auth)
            pricing = _get(web.port, "/pricing/")
            health = _get(web.port, "/healthz")

    status, headers, body = me
    assert status == 503, body[:300]
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert json.loads(body)["error"]["code"] == "database_unavailable"

    status, headers, body = models
    assert headers["Content-Type"].startswith("application/json"), body[:300]
    assert set(json.loads(body)) == {"error"} or status == 200

    status, headers, body = pricing
    assert status in (200, 503), body[:300]
    assert b"Traceback" not in body and b"technical_500" not in body

    status, _, body = health
    assert status == 503
    failing = json.loads(body)["failing"]
    assert "database" in failing and "broker" in failing, failing
    report(f"\nvar/ read-only: /api/v1/me {me[0]}, /v1/models {models[0]}, /pricing/ {pricing[0]}, /healthz {failing}")
