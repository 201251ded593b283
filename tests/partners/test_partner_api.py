"""POST /api/v1/partner/usage-events through the HTTP interface (Django's test client, and a live
server for the concurrent case)."""

from __future__ import annotations

import http.client
import json
import threading
from datetime import UTC, date, datetime, timedelta

import pytest
from django.test import Client
from django.utils import timezone

from partners import services as partners
from partners.models import PartnerKey, PartnerUsageEvent

URL = "/api/v1/partner/usage-events"


@pytest.fixture(autouse=True)
def _fresh_partner_keys():
    partners.partner_key_cache_clear()
    yield
    partners.partner_key_cache_clear()


@pytest.fixture
def partner(db):
    partner, secret = partners.partner_create(
        slug="cloudco", name="CloudCo", share_bps=1500, contact_email="billing@cloudco.example"
    )
    return partner, secret


def event(event_id: str, **overrides) -> dict:
    body = {
        "event_id": event_id,
        "customer": "acme",
        "model": "Llama-3.3-70B-Instruct",
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "amount_cents": 12,
        "currency": "usd",
        "time": (timezone.now() - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
    }
    body.update(overrides)
    return body


def post(body, secret: str | None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"} if secret else {}
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return Client().post(URL, data, content_type="application/json", **headers)


def test_batch_with_valid_duplicate_and_malformed_events_counts_exactly(partner, django_assert_max_num_queries):
    p, secret = partner
    assert post({"events": [event("old-1")]}, secret).json()["accepted"] == 1
    events = [
        event("e-1"),
        event("old-1"),  # reported in an earlier batch
        event("e-2", amount_cents=-1),
        event("e-3"),
        event("e-1"),  # repeated in this batch: counts once, the repeat is a duplicate
        "not an object",
        event("e-4", time="2026-01-01T00:00:00"),  # no timezone
        event("e-5", currency="dollars"),
        event("e-6", prompt_tokens=True),
        event("", customer="x"),
        event("e-7", time=(timezone.now() + timedelta(hours=1)).isoformat()),
        event("e-8", customer=""),
        event("e-9", model="m" * 101),
        event("e-10", time="yesterday"),
        event("e-11", completion_tokens=1.5),
    ]
    # Auth lookup + last_used_at + one INSERT for the whole batch: no per-event queries.
    with django_assert_max_num_queries(3):
        response = post({"events": events}, secret)
    assert response.status_code == 200
    body = response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 2, 11)
    assert [error["index"] for error in body["errors"]] == [2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    assert "amount_cents" in body["errors"][0]["message"]
    assert "timezone" in body["errors"][2]["message"]
    assert "future" in body["errors"][6]["message"]
    stored = PartnerUsageEvent.objects.filter(partner=p)
    assert sorted(stored.values_list("event_id", flat=True)) == ["e-1", "e-3", "old-1"]
    e1 = stored.get(event_id="e-1")
    assert (e1.customer, e1.amount_cents, e1.currency, e1.prompt_tokens, e1.statement_id) == (
        "acme",
        12,
        "usd",
        100,
        None,
    )


def test_a_resent_batch_adds_nothing(partner):
    p, secret = partner
    batch = {"events": [event(f"r-{i}", amount_cents=i) for i in range(50)]}
    first = post(batch, secret).json()
    again = post(batch, secret).json()
    assert (first["accepted"], first["duplicates"]) == (50, 0)
    assert (again["accepted"], again["duplicates"], again["rejected"]) == (0, 50, 0)
    assert PartnerUsageEvent.objects.filter(partner=p).count() == 50
    assert sum(PartnerUsageEvent.objects.values_list("amount_cents", flat=True)) == sum(range(50))


def test_event_ids_are_per_partner(partner):
    _, secret = partner
    _, other_secret = partners.partner_create(
        slug="othercloud", name="Other", share_bps=1000, contact_email="o@other.example"
    )
    assert post({"events": [event("same")]}, secret).json()["accepted"] == 1
    assert post({"events": [event("same")]}, other_secret).json()["accepted"] == 1
    assert PartnerUsageEvent.objects.filter(event_id="same").count() == 2


def test_event_times_are_stored_in_utc(partner):
    p, secret = partner
    # The partner was created today: a rate dated earlier lets it report events of that time.
    partners.partner_share_rate_set(partner=p, share_bps=1500, effective_from=date(2026, 2, 1))
    post({"events": [event("tz", time="2026-03-01T01:30:00+02:00")]}, secret)
    stored = PartnerUsageEvent.objects.get(partner=p, event_id="tz")
    assert stored.occurred_at == datetime(2026, 2, 28, 23, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("secret", "status", "code"),
    [
        (None, 401, "invalid_partner_key"),
        ("tlp-" + "x" * 45, 401, "invalid_partner_key"),
        ("tl-" + "x" * 45, 401, "invalid_partner_key"),  # a team API key is not a partner key
    ],
)
def test_bad_partner_keys_are_refused(partner, secret, status, code):
    response = post({"events": [event("x")]}, secret)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert PartnerUsageEvent.objects.count() == 0


def test_revoked_key_and_inactive_partner_are_refused(partner):
    p, secret = partner
    partners.partner_key_revoke(key=PartnerKey.objects.get(partner=p))
    partners.partner_key_cache_clear()
    assert post({"events": [event("x")]}, secret).status_code == 401
    _, fresh = partners.partner_key_create(partner=p)
    p.is_active = False
    p.save()
    response = post({"events": [event("x")]}, fresh)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "partner_inactive"
    assert PartnerUsageEvent.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ("{not json", "invalid", None),
        ([], "invalid", "events"),
        ({"events": {"a": 1}}, "invalid", "events"),
        ({"events": [{"event_id": str(i)} for i in range(1001)]}, "too_many_events", "events"),
    ],
)
def test_malformed_bodies_are_400_in_the_api_error_shape(partner, body, code, param):
    _, secret = partner
    response = post(body, secret)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert error["message"]
    assert PartnerUsageEvent.objects.count() == 0


def test_a_full_batch_of_1000_is_accepted(partner):
    _, secret = partner
    body = post({"events": [event(f"full-{i}") for i in range(1000)]}, secret).json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (1000, 0, 0)


def test_an_oversized_body_is_413_in_the_api_error_shape(partner, settings):
    _, secret = partner
    settings.TIERLAB_PARTNER_MAX_BODY_BYTES = 1_000
    response = post({"events": [event(f"big-{i}") for i in range(20)]}, secret)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert PartnerUsageEvent.objects.count() == 0


def test_a_batch_larger_than_djangos_upload_limit_but_within_the_partner_limit_is_accepted(partner, settings):
    """Pages keep Django's 2.5 MB DATA_UPLOAD_MAX_MEMORY_SIZE; the ingest has its own 8 MiB limit."""
    _, secret = partner
    events = [{**event(f"wide-{i}"), "note": "x" * 3_000} for i in range(1000)]  # about 3.2 MB
    body = post({"events": events}, secret).json()
    assert body["accepted"] == 1000
    big_form = Client().post("/accounts/login/", {"login": "a@b.example", "password": "x" * 3_000_000})
    assert big_form.status_code == 400  # Django's RequestDataTooBig on a page


def test_get_is_refused(partner):
    _, secret = partner
    response = Client().get(URL, HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 405


@pytest.mark.django_db(transaction=True)
def test_the_same_batch_sent_twice_concurrently_is_counted_once(live_server):
    p, secret = partners.partner_create(slug="racer", name="Racer", share_bps=1000, contact_email="r@racer.example")
    batch = json.dumps({"events": [event(f"c-{i}", amount_cents=1) for i in range(1000)]}).encode()
    results: list[dict] = []
    failures: list[BaseException] = []
    start = threading.Barrier(2)
    host, port = live_server.thread.host, live_server.thread.port
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"}

    def send() -> None:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=60)
            start.wait(10)
            conn.request("POST", URL, body=batch, headers=headers)
            results.append(json.loads(conn.getresponse().read()))
            conn.close()
        except Exception as exc:  # reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not failures
    assert sum(r["accepted"] for r in results) == 1000
    assert sum(r["duplicates"] for r in results) == 1000
    assert PartnerUsageEvent.objects.filter(partner=p).count() == 1000
