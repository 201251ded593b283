"""/healthz with the Redis broker unreachable: 503, the broker check "error", promptly."""

from __future__ import annotations

import time

import pytest
from celery import Celery

import config.health
from tests.helpers_celery import closed_loopback_port

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


def test_is_503_with_the_broker_check_error_when_redis_is_unreachable(client, monkeypatch):
    # A Celery app of its own at a loopback port nothing listens on; the project's app is left alone
    # (monkeypatch puts the module's app back after the test).
    dead_broker = Celery("healthz-dead-broker", set_as_current=False)
    dead_broker.conf.update(broker_url=f"redis://127.0.0.1:{closed_loopback_port()}/0")
    monkeypatch.setattr(config.health, "celery_app", dead_broker)
    # Celery prefers the CELERY_BROKER_URL environment variable (CI sets it) over an app's own broker_url.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)

    started = time.monotonic()
    response = client.get("/healthz")
    took = time.monotonic() - started

    assert response.status_code == 503, response.content
    body = response.json()
    assert body["status"] == "error"
    assert body["checks"]["broker"]["status"] == "error"
    assert "refused" in body["checks"]["broker"]["error"].lower()
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["database"]["vendor"] == "postgresql"
    # A load balancer polls this: an outage must be reported in seconds, not hang the probe.
    assert took < 10


def test_is_200_again_with_the_configured_broker(client):
    # The app /healthz uses is the project's again, at the real Redis.
    response = client.get("/healthz")

    assert response.status_code == 200, response.content
    assert response.json()["checks"]["broker"]["transport"] == "redis"
