"""/healthz: 200 when the database and the broker answer, else 503; the body reports each part.

Failures here are real ones (a database file that cannot be opened, a broker folder that cannot be
created), not monkeypatched checks. The same tests run in CI's PostgreSQL + Redis run; the broker-down
case for Redis is in tests/integration/test_healthz_broker_down.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from celery import Celery
from django.db import connection
from django.db.utils import ConnectionHandler
from django.utils import timezone

import config.health
from core.services import heartbeat_record
from tests.helpers_celery import broker_scheme

pytestmark = pytest.mark.django_db


def healthz(client):
    response = client.get("/healthz")
    assert response["Content-Type"] == "application/json"
    return response, response.json()


def test_reports_each_part_and_is_200(client):
    response, body = healthz(client)

    assert response.status_code == 200, body
    assert "no-cache" in response["Cache-Control"]  # a cached health answer would hide an outage
    assert body["status"] == "ok"
    database, broker = body["checks"]["database"], body["checks"]["broker"]
    assert database["status"] == "ok"
    assert database["vendor"] == connection.vendor
    assert isinstance(database["latency_ms"], float)
    assert broker["status"] == "ok"
    assert broker["transport"] == broker_scheme()
    assert isinstance(broker["latency_ms"], float)
    assert body["time"]


def test_answers_get_only(client):
    assert client.post("/healthz").status_code == 405


def test_scheduler_is_never_without_a_beat(client):
    response, body = healthz(client)

    assert response.status_code == 200
    assert body["scheduler"] == {"status": "never", "last_beat": None}


def test_scheduler_is_ok_after_a_beat(client):
    beat = heartbeat_record()

    response, body = healthz(client)

    assert response.status_code == 200
    assert body["scheduler"]["status"] == "ok"
    assert body["scheduler"]["last_beat"] == beat.beat_at.isoformat()
    assert body["scheduler"]["beats"] == 1
    assert 0 <= body["scheduler"]["age_seconds"] < 60


def test_scheduler_is_stale_after_an_old_beat_yet_the_node_serves(client, settings):
    heartbeat_record(now=timezone.now() - timedelta(seconds=settings.TIERLAB_HEARTBEAT_STALE_AFTER_SECONDS + 60))

    response, body = healthz(client)

    # A stalled beat is reported, but the web node can still serve: 200.
    assert response.status_code == 200
    assert body["status"] == "ok"
    assert body["scheduler"]["status"] == "stale"


def test_scheduler_turns_stale_once_the_threshold_passes(client, settings):
    settings.TIERLAB_HEARTBEAT_STALE_AFTER_SECONDS = 120
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        heartbeat_record()
        clock.shift(timedelta(seconds=119))
        assert healthz(client)[1]["scheduler"]["status"] == "ok"
        clock.shift(timedelta(seconds=2))
        assert healthz(client)[1]["scheduler"]["status"] == "stale"
        # The next beat makes it fresh again.
        heartbeat_record()
        _, body = healthz(client)
    assert body["scheduler"]["status"] == "ok"
    assert body["scheduler"]["beats"] == 2


def test_is_503_when_the_broker_folder_cannot_be_used(client, settings, monkeypatch, tmp_path):
    # The embedded broker is a folder. Make its queue folder impossible: a plain file sits where its
    # parent directory should be. (A read-only directory would not do: CI runs as root, and root
    # writes anywhere.) A Celery app of its own, so the project's app is never reconfigured.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    folders = {
        key: str(blocker / name)
        for key, name in [
            ("data_folder_in", "queue"),
            ("data_folder_out", "queue"),
            ("control_folder", "control"),
            ("processed_folder", "processed"),
        ]
    }
    broken_app = Celery("healthz-broken-folder", set_as_current=False)
    broken_app.conf.update(broker_url="filesystem://", broker_transport_options=folders)
    monkeypatch.setattr(config.health, "celery_app", broken_app)
    # Celery prefers the CELERY_BROKER_URL environment variable (CI sets it) over an app's own broker_url.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = folders

    response, body = healthz(client)

    assert response.status_code == 503, body
    assert body["status"] == "error"
    assert body["checks"]["broker"]["status"] == "error"
    assert "not-a-directory" in body["checks"]["broker"]["error"]
    assert body["checks"]["database"]["status"] == "ok"


def test_is_503_when_the_database_cannot_be_reached(client, monkeypatch, tmp_path):
    # A database connection that really fails: SQLite cannot open a file in a folder that is missing.
    broken = ConnectionHandler(
        {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "missing" / "db.sqlite3")}}
    )["default"]
    monkeypatch.setattr(config.health, "connection", broken)
    try:
        response, body = healthz(client)
    finally:
        broken.close()

    assert response.status_code == 503, body
    assert body["status"] == "error"
    assert body["checks"]["database"]["status"] == "error"
    assert body["checks"]["database"]["error"].startswith("OperationalError")
    assert body["checks"]["broker"]["status"] == "ok"
