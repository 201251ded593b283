"""The real path on the production stack: beat -> Redis -> worker -> PostgreSQL, then /healthz says so."""

from __future__ import annotations

import pytest

from core.selectors import heartbeat_last
from tests.helpers_celery import celery_worker_and_beat, heartbeat_schedule_every_second

pytestmark = [pytest.mark.integration, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_beat_and_worker_record_heartbeats_through_redis_into_postgresql(tmp_path, client):
    heartbeat_schedule_every_second()
    assert heartbeat_last() is None

    with celery_worker_and_beat(tmp_path / "celery") as celery:
        beat = celery.wait_for("second heartbeat", lambda: (hb := heartbeat_last()) and hb.count >= 2 and hb)
        response = client.get("/healthz")
    assert [p.name for p in celery.processes if p.killed] == [], "worker/beat ignored TERM\n" + celery.logs()

    assert beat.count >= 2
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["database"]["vendor"] == "postgresql"
    assert body["checks"]["broker"]["status"] == "ok"
    assert body["checks"]["broker"]["transport"] == "redis"
    assert body["scheduler"]["status"] == "ok"
    assert body["scheduler"]["beats"] >= 2
    assert body["scheduler"]["age_seconds"] < 30
