"""Beat -> broker -> worker -> database, with real processes, on the embedded default.

The worker and beat run as the Procfile runs them (``celery -A config worker|beat``), against the
embedded filesystem broker and the SQLite test database file this test uses. (In CI's PostgreSQL +
Redis run the same test goes through Redis; tests/integration/test_celery_heartbeat.py adds the checks
specific to those servers.)
"""

from __future__ import annotations

import pytest
from django.db import connection

from core.selectors import heartbeat_last
from tests.helpers_celery import broker_scheme, celery_worker_and_beat, heartbeat_schedule_every_second

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_beat_schedules_the_heartbeat_and_the_worker_records_it(tmp_path, client):
    heartbeat_schedule_every_second()
    assert heartbeat_last() is None

    with celery_worker_and_beat(tmp_path / "celery") as celery:
        # Two beats: the schedule repeats, it did not just fire once at start-up.
        beat = celery.wait_for("second heartbeat", lambda: (hb := heartbeat_last()) and hb.count >= 2 and hb)
    assert [p.name for p in celery.processes if p.killed] == [], "worker/beat ignored TERM\n" + celery.logs()

    assert beat.count >= 2
    response = client.get("/healthz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["checks"]["database"]["vendor"] == connection.vendor
    assert body["checks"]["broker"]["transport"] == broker_scheme()
    assert body["scheduler"]["status"] == "ok"
    assert body["scheduler"]["beats"] >= 2
