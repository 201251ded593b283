"""Partners, keys and share rates through the service layer and the management commands."""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import Client

from accounts.models import ApiKey
from core.errors import ApplicationError
from partners import services as partners
from partners.models import Partner, PartnerKey, PartnerShareRate, PartnerStatement
from usage.models import UsageRecord


@pytest.fixture(autouse=True)
def _fresh_partner_keys():
    partners.partner_key_cache_clear()
    yield
    partners.partner_key_cache_clear()


def make_partner(slug="cloudco", share_bps=1500, now=None) -> tuple[Partner, str]:
    return partners.partner_create(
        slug=slug, name=slug.title(), share_bps=share_bps, contact_email=f"b@{slug}.example", now=now
    )


@pytest.mark.django_db
def test_partner_create_gives_a_rate_from_today_and_a_working_key():
    now = datetime(2026, 5, 17, 23, 30, tzinfo=UTC)
    partner, secret = partners.partner_create(
        slug="cloudco", name="CloudCo", share_bps=1500, contact_email="b@cloudco.example", now=now
    )
    assert list(PartnerShareRate.objects.values_list("effective_from", "share_bps")) == [(date(2026, 5, 17), 1500)]
    key = PartnerKey.objects.get(partner=partner)
    assert secret.startswith("tlp-") and secret[:16] == key.prefix
    assert secret not in key.secret_hash and len(key.secret_hash) == 64
    authenticated = partners.partner_key_authenticate(raw_key=secret, now=now)
    assert authenticated is not None and authenticated.partner_id == partner.pk
    assert partners.partner_key_authenticate(raw_key=secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    key.refresh_from_db()
    assert key.last_used_at == now


@pytest.mark.django_db
def test_partner_create_refuses_a_share_over_100_percent_and_bad_slugs():
    with pytest.raises(ValidationError, match="share_bps"):
        partners.partner_create(slug="x", name="X", share_bps=10_001, contact_email="x@x.example")
    with pytest.raises(ValidationError, match="slug"):
        partners.partner_create(slug="not a slug", name="X", share_bps=100, contact_email="x@x.example")
    assert Partner.objects.count() == 0


@pytest.mark.django_db
def test_share_rate_set_replaces_same_day_and_refuses_dates_on_issued_statements():
    partner, _ = make_partner(now=datetime(2026, 1, 5, tzinfo=UTC))
    partners.partner_share_rate_set(partner=partner, share_bps=2000, effective_from=date(2026, 3, 10))
    partners.partner_share_rate_set(partner=partner, share_bps=2500, effective_from=date(2026, 3, 10))
    rates = partners.share_rates_for(partner_id=partner.pk)
    assert rates == [(date(2026, 1, 5), 1500), (date(2026, 3, 10), 2500)]
    assert partners.share_bps_on(rates=rates, day=date(2026, 3, 9)) == 1500
    assert partners.share_bps_on(rates=rates, day=date(2026, 3, 10)) == 2500

    PartnerStatement.objects.create(partner=partner, month=date(2026, 3, 1), issued_at=datetime(2026, 4, 1, tzinfo=UTC))
    assert partners.share_rates_locked_before(partner_id=partner.pk) == date(2026, 4, 1)
    with pytest.raises(ApplicationError, match="2026-04-01"):
        partners.partner_share_rate_set(partner=partner, share_bps=100, effective_from=date(2026, 3, 31))
    partners.partner_share_rate_set(partner=partner, share_bps=100, effective_from=date(2026, 4, 1))
    assert PartnerShareRate.objects.get(partner=partner, effective_from=date(2026, 3, 10)).share_bps == 2500


def test_share_bps_on_picks_the_latest_rate_in_force():
    rates = [(date(2026, 1, 1), 1000), (date(2026, 2, 15), 2000)]
    assert partners.share_bps_on(rates=rates, day=date(2025, 12, 31)) == 0
    assert partners.share_bps_on(rates=rates, day=date(2026, 2, 14)) == 1000
    assert partners.share_bps_on(rates=rates, day=date(2026, 2, 15)) == 2000


@pytest.mark.django_db
def test_create_partner_command_prints_the_key_alone_on_the_last_line():
    out = io.StringIO()
    call_command("create_partner", "--slug", "cloudco", "--name", "CloudCo", "--share-bps", "1750", stdout=out)
    secret = out.getvalue().strip().splitlines()[-1]
    partner = Partner.objects.get(slug="cloudco")
    assert partners.partner_key_authenticate(raw_key=secret).partner_id == partner.pk
    assert partners.share_rates_for(partner_id=partner.pk)[0][1] == 1750

    # Again with the same slug: a second key, the share left alone.
    out = io.StringIO()
    call_command(
        "create_partner", "--slug", "cloudco", "--name", "CloudCo", "--share-bps", "1", stdout=out, stderr=io.StringIO()
    )
    second = out.getvalue().strip().splitlines()[-1]
    assert second != secret and partners.partner_key_authenticate(raw_key=second).partner_id == partner.pk
    assert PartnerKey.objects.filter(partner=partner).count() == 2
    assert partners.share_rates_for(partner_id=partner.pk)[0][1] == 1750

    with pytest.raises(CommandError):
        call_command("create_partner", "--slug", "bad slug", "--name", "B", "--share-bps", "1", stdout=io.StringIO())


@pytest.mark.django_db
def test_create_partner_share_from_starts_the_share_on_that_day():
    # The README's example reports an event from before today: its share must be in force then.
    out = io.StringIO()
    call_command(
        "create_partner", "--slug", "early", "--name", "Early", "--share-bps", "1500", "--share-from", "2026-11-01",
        stdout=out,
    )  # fmt: skip
    assert "15% share from 2026-11-01" in out.getvalue()
    assert partners.share_rates_for(partner_id=Partner.objects.get(slug="early").pk) == [(date(2026, 11, 1), 1500)]
    with pytest.raises(CommandError, match="share-from"):
        call_command(
            "create_partner", "--slug", "late", "--name", "L", "--share-bps", "1", "--share-from", "November",
            stdout=io.StringIO(),
        )  # fmt: skip
    assert not Partner.objects.filter(slug="late").exists()


def test_direct_traffic_through_a_partner_channel_key_is_attributed_to_the_partner(catalog):
    partner, _ = make_partner()
    out = io.StringIO()
    call_command("create_api_key", "--email", "dev@example.com", "--name", "app", "--partner", "cloudco", stdout=out)
    secret = out.getvalue().strip().splitlines()[-1]
    assert ApiKey.objects.get().partner_channel.partner_id == partner.pk
    response = Client().post(
        "/v1/chat/completions",
        json.dumps({"model": "Llama-3.3-8B-Instruct", "messages": [{"role": "user", "content": "hi"}]}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 200
    assert list(UsageRecord.objects.values_list("partner_id", flat=True)) == [partner.pk]

    with pytest.raises(CommandError, match="No partner"):
        call_command("create_api_key", "--email", "x@example.com", "--name", "a", "--partner", "nope", stdout=out)


@pytest.mark.django_db
def test_last_used_at_is_written_at_most_once_a_minute():
    _, secret = make_partner()
    with time_machine.travel(datetime(2026, 5, 1, 12, 0, tzinfo=UTC), tick=False) as clock:
        partners.partner_key_authenticate(raw_key=secret)
        clock.shift(30)
        partners.partner_key_authenticate(raw_key=secret)
        assert PartnerKey.objects.get().last_used_at == datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
        clock.shift(31)
        partners.partner_key_authenticate(raw_key=secret)
        assert PartnerKey.objects.get().last_used_at == datetime(2026, 5, 1, 12, 1, 1, tzinfo=UTC)
