from __future__ import annotations

import os

import pytest

from tiers import services as tier_services

pytest_plugins = ["tests.stripe_fixtures"]


def pytest_configure(config):
    # The live server (Django's threaded WSGIServer) listens with a backlog of 10 connections; the
    # race tests open 50 at once, and on a loaded machine the overflow was answered with a reset
    # instead of a queued connection. A backlog like gunicorn's (2048) takes them all.
    from django.core.servers.basehttp import WSGIServer

    WSGIServer.request_queue_size = 2048


def pytest_collection_modifyitems(config, items):
    # The integration group needs PostgreSQL and Redis, which .ci/run starts and announces with
    # TIERLAB_INTEGRATION=1; elsewhere it is skipped with the reason shown.
    if os.environ.get("TIERLAB_INTEGRATION") == "1":
        return
    skip = pytest.mark.skip(
        reason="integration group: run by .ci/run against PostgreSQL + Redis (TIERLAB_INTEGRATION=1)"
    )
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def catalog(db):
    """The seed catalog (models and the free/plus/pro/enterprise tiers)."""
    tier_services.tier_catalog_seed()
    from tiers.models import Tier

    return {tier.slug: tier for tier in Tier.objects.all()}


@pytest.fixture
def free_tier(catalog):
    return catalog["free"]


@pytest.fixture(autouse=True)
def _fresh_cache():
    # allauth keeps rate limits in the cache; tests must not inherit each other's counters.
    from django.core.cache import cache

    cache.clear()
    yield


@pytest.fixture(autouse=True)
def _fresh_process_caches():
    # Keys, entitlements, licence gates and refusal counts are cached per process on the request path.
    from accounts.selectors import api_key_cache_clear
    from core.invalidation import cache_invalidations_reset
    from partners.services import partner_key_cache_clear
    from tiers.selectors import entitlements_cache_clear
    from usage.metering import metering_caches_clear

    api_key_cache_clear()
    partner_key_cache_clear()
    entitlements_cache_clear()
    metering_caches_clear()
    cache_invalidations_reset()
    yield


@pytest.fixture
def report(capsys):
    """``report(text)`` prints past pytest's capture, so a test's measured counts appear in CI's log
    even when it passes (fault and fuzz runs: answered / records / counters)."""

    def emit(text: str) -> None:
        with capsys.disabled():
            print(text)

    return emit
