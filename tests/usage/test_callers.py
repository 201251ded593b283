"""The model API's cold read (usage/callers.py): on a key-cache miss, ONE statement reads the key, its
team's current subscription, the key's channel partner and the team's licence gate, and each answer is
the one the separate reads give (issue 17: with thousands of active teams the caches mostly miss)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.selectors import api_key_cache_clear, team_for_user
from accounts.services import api_key_create, api_key_revoke
from partners.models import LicenseAgreement
from partners.services import partner_channel_key_create
from tests.factories import PartnerFactory
from tiers import services as tier_services
from tiers.selectors import entitlements_cache_clear, entitlements_for_teams
from usage import errors, metering
from usage.quotas.base import UsageEvent
from usage.quotas.database import DatabaseQuotaBackend

pytestmark = pytest.mark.django_db


def _forget_everything() -> None:
    api_key_cache_clear()
    entitlements_cache_clear()
    metering.metering_caches_clear()


def _subscriber(email: str, tier_slug: str = "pro"):
    user = tier_services.user_create(email=email, password="x-Secret-123", tier_slug=tier_slug)
    return team_for_user(user=user)


def _forget_all_but_the_tier(tier_slug: str = "pro") -> None:
    """Every per-team and per-key entry forgotten, the tier's terms cached (read once per tier and TTL,
    shared by its teams): another team of the tier is read first."""
    _forget_everything()
    other = _subscriber(f"other-{tier_slug}-{timezone.now().timestamp()}@example.com", tier_slug)
    _key, secret = api_key_create(team=other, name="other")
    metering.caller_authenticate(authorization=f"Bearer {secret}", now=timezone.now())


def test_a_cold_key_costs_one_statement_and_primes_every_cache(catalog):
    team = _subscriber("cold@example.com")
    partner = PartnerFactory()
    key, secret = partner_channel_key_create(partner=partner, team=team, name="via partner")
    LicenseAgreement.objects.create(
        team=team, required_from=date(2026, 1, 1), reported_mau=800_000_000, mau_month=date(2025, 12, 1),
        created_at=timezone.now(),
    )  # fmt: skip
    _forget_all_but_the_tier()
    now = timezone.now()
    with CaptureQueriesContext(connection) as queries:
        caller = metering.caller_authenticate(authorization=f"Bearer {secret}", now=now)
        required_from = metering.license_required_from(team_id=team.id)
    assert len(queries) == 1, [q["sql"] for q in queries]
    assert caller.key.key_id == key.id and caller.partner_id == partner.id
    assert required_from == date(2026, 1, 1)
    # The primed entitlements are the ones the many-teams read puts together from model instances.
    expected = entitlements_for_teams(team_ids=[team.id])[team.id]
    assert dataclasses.asdict(caller.entitlements) == dataclasses.asdict(expected)
    # Everything is cached now: the next request of the key reads nothing.
    with CaptureQueriesContext(connection) as queries:
        metering.caller_authenticate(authorization=f"Bearer {secret}", now=now)
        metering.license_required_from(team_id=team.id)
    assert len(queries) == 0


def test_a_direct_key_without_licence_reads_none_for_both(catalog):
    team = _subscriber("direct@example.com")
    _key, secret = api_key_create(team=team, name="direct")
    _forget_all_but_the_tier()
    with CaptureQueriesContext(connection) as queries:
        caller = metering.caller_authenticate(authorization=f"Bearer {secret}", now=timezone.now())
        assert metering.license_required_from(team_id=team.id) is None
    assert len(queries) == 1
    assert caller.partner_id is None and caller.entitlements.tier_slug == "pro"


def test_a_granted_licence_lifts_the_gate_in_the_one_statement(catalog):
    team = _subscriber("granted@example.com")
    _key, secret = api_key_create(team=team, name="k")
    LicenseAgreement.objects.create(
        team=team, status=LicenseAgreement.Status.GRANTED, required_from=date(2026, 1, 1),
        reported_mau=800_000_000, mau_month=date(2025, 12, 1), created_at=timezone.now(),
    )  # fmt: skip
    _forget_everything()
    metering.caller_authenticate(authorization=f"Bearer {secret}", now=timezone.now())
    with CaptureQueriesContext(connection) as queries:
        assert metering.license_required_from(team_id=team.id) is None
    assert len(queries) == 0


def test_a_team_without_a_current_subscription_is_refused_from_the_one_statement(catalog):
    team = _subscriber("gone@example.com")
    _key, secret = api_key_create(team=team, name="k")
    team.subscriptions.update(status="canceled")
    _forget_everything()
    with pytest.raises(errors.SubscriptionInactive):
        metering.caller_authenticate(authorization=f"Bearer {secret}", now=timezone.now())


def test_a_revoked_key_read_cold_is_refused(catalog):
    team = _subscriber("revoked@example.com")
    key, secret = api_key_create(team=team, name="k")
    api_key_revoke(key=key)
    _forget_everything()
    with pytest.raises(errors.InvalidApiKey):
        metering.caller_authenticate(authorization=f"Bearer {secret}", now=timezone.now())


def test_an_unknown_key_is_refused_and_primes_nothing(catalog):
    _forget_everything()
    with pytest.raises(errors.InvalidApiKey):
        metering.caller_authenticate(authorization="Bearer tl-" + "x" * 40, now=timezone.now())


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-statement consume is PostgreSQL's")
def test_postgresql_consume_moves_the_keys_last_used_time_in_its_one_statement(catalog):
    team = _subscriber("mark@example.com")
    key, _secret = api_key_create(team=team, name="k")
    _forget_everything()
    backend = DatabaseQuotaBackend()
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    entitlements = entitlements_for_teams(team_ids=[team.id])[team.id]
    limits = metering.limits_for(entitlements=entitlements, now=now)
    backend.consume(
        team_id=team.id, request_id="warm", limits=limits, tokens=10, now=now,
        event=UsageEvent(request_id="warm", team_id=team.id, api_key_id=None, model="m", prompt_tokens=1,
                         completion_tokens=1, created_at=now),
    )  # fmt: skip  # the team's first request makes its quota row (the transactional path)
    event = UsageEvent(
        request_id="r1",
        team_id=team.id,
        api_key_id=key.id,
        model="m",
        prompt_tokens=3,
        completion_tokens=4,
        created_at=now,
    )
    with CaptureQueriesContext(connection) as queries:
        decision = backend.consume(team_id=team.id, request_id="r1", limits=limits, tokens=10, event=event, now=now)
    assert decision.allowed
    assert len(queries) == 1, [q["sql"] for q in queries]
    key.refresh_from_db()
    assert key.last_used_at == now


@pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements are PostgreSQL's")
def test_postgresql_prepares_the_cold_read_once_per_connection(catalog):
    team = _subscriber("prepared@example.com")
    _key, secret = api_key_create(team=team, name="k")
    _forget_all_but_the_tier()

    def prepared() -> list[str]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT statement FROM pg_prepared_statements")
            return [row[0] for row in cursor.fetchall()]

    metering.caller_authenticate(authorization=f"Bearer {secret}", now=timezone.now())
    after = [sql for sql in prepared() if '"accounts_apikey"' in sql]
    assert len(after) == 1, after  # the cold read, prepared on this connection
    api_key_cache_clear()
    metering.caller_authenticate(authorization=f"Bearer {secret}", now=timezone.now())
    assert [sql for sql in prepared() if '"accounts_apikey"' in sql] == after  # run again, not prepared again
