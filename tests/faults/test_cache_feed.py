"""Across real processes: a web server's workers keep keys and entitlements for minutes
(TIERLAB_AUTH_CACHE_MAX_SECONDS), yet a change made anywhere, even by a bulk UPDATE that no service
sees, is applied by every worker within TIERLAB_AUTH_CACHE_SECONDS: the database's triggers write the
invalidation feed and each worker polls it (core/invalidation.py). Without the feed, both checks below
would wait the ten minutes."""

from __future__ import annotations

import time

from django.conf import settings
from django.utils import timezone

from accounts.models import ApiKey
from tests.faults.conftest import SMALL, http_request
from tiers.models import Subscription, Tier

# Requests per check, each on a new connection: gunicorn's 2 workers both answer some of them.
PROBES = 16


def _statuses(port: int, secret: str, method: str = "GET", path: str = "/v1/models", body=None) -> set[int]:
    return {http_request(port, method, path, secret=secret, body=body)[0] for _ in range(PROBES)}


def _seconds_until(check) -> float:
    started = time.monotonic()
    limit = settings.TIERLAB_AUTH_CACHE_SECONDS + 5
    while time.monotonic() - started < limit:
        if check():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"not seen within {limit} s")


def test_every_worker_applies_a_change_within_seconds_though_it_caches_for_minutes(serve_app, fault_account):
    team, secret = fault_account
    assert settings.TIERLAB_AUTH_CACHE_MAX_SECONDS >= 60 * settings.TIERLAB_AUTH_CACHE_SECONDS
    server = serve_app(backend="database", secret=secret)
    chat = {"model": SMALL, "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 4}
    assert _statuses(server.port, secret, "POST", "/v1/chat/completions", chat) == {200}  # cached by both

    # The tier loses the model: a bulk UPDATE of the through table, as an operator's SQL would do it.
    Tier.objects.get(slug="faults").allowed_models.clear()
    waited = _seconds_until(lambda: _statuses(server.port, secret, "POST", "/v1/chat/completions", chat) == {403})
    assert waited <= settings.TIERLAB_AUTH_CACHE_SECONDS + 1.5

    # The key is revoked by a bulk UPDATE (no service, no on_commit): refused by every worker.
    assert _statuses(server.port, secret) == {200}
    ApiKey.objects.filter(team=team).update(revoked_at=timezone.now())
    waited = _seconds_until(lambda: _statuses(server.port, secret) == {401})
    assert waited <= settings.TIERLAB_AUTH_CACHE_SECONDS + 1.5
    assert Subscription.objects.filter(team=team).count() == 1
