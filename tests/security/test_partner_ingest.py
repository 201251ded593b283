"""Issue 11, finding 5 and two items of 7, reproduced over HTTP: partner ingest refuses what the
database, the statements or a spreadsheet cannot take, per event, and keeps the valid events; a
webhook signed in the future is refused; an MAU month keeps a four-digit year."""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.utils import timezone

from partners import services as partners
from partners import statements as partner_statements
from partners.models import MonthlyActiveUsers, PartnerStatement, PartnerUsageEvent
from tests.billing.test_webhooks import deliver, payment_intent_event, sign
from tests.partners.test_licensing_api import MAU
from tests.partners.test_licensing_api import accounts as accounts  # a fixture
from tests.partners.test_partner_api import _fresh_partner_keys as _fresh_partner_keys  # an autouse fixture
from tests.partners.test_partner_api import event, post
from tests.partners.test_partner_api import partner as partner  # a fixture

FORMULA = "=1+1+cmd|' /C calc'!A0"


BAD_EVENTS = {
    "nested object": event("bad-1", customer={"name": "acme"}),
    "nested array in an unread field": event("bad-2", extra=[[[1]]]),
    "year 1 at +14:00": event("bad-3", time="0001-01-01T00:00:00+14:00"),
    "year 9999 at -14:00": event("bad-4", time="9999-12-31T23:59:59-14:00"),
    "NUL in customer": event("bad-5", customer="ac\x00me"),
    "NUL in event id": event("bad-6\x00"),
    "lone surrogate in model": event("bad-7", model="Llama\ud800"),
    "lone surrogate in an unread field": event("bad-8", note="\udfff"),
    "lone surrogate in a key": event("bad-9", **{"k\ud83d": 1}),
    "dated year 1": event("bad-10", time="0001-01-01T00:00:00Z"),
    "long before the first share rate": event("bad-11", time="2020-01-01T00:00:00Z"),
    "a day ahead": event("bad-12", time=(timezone.now() + timedelta(days=1)).isoformat()),
    "2^63-1 prompt tokens": event("bad-13", prompt_tokens=2**63 - 1),
    "over the per-event maximum": event("bad-14", completion_tokens=partners.MAX_EVENT_COUNT + 1),
    "negative amount": event("bad-15", amount_cents=-1),
}


def test_a_mixed_batch_keeps_the_valid_events_and_reports_each_bad_one(partner):
    _, secret = partner
    events = [event("ok-1"), *BAD_EVENTS.values(), event("ok-2", prompt_tokens=partners.MAX_EVENT_COUNT)]
    response = post({"events": events}, secret)

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 0, len(BAD_EVENTS))
    assert [error["index"] for error in body["errors"]] == list(range(1, len(BAD_EVENTS) + 1))
    assert all(error["message"] for error in body["errors"])
    assert sorted(PartnerUsageEvent.objects.values_list("event_id", flat=True)) == ["ok-1", "ok-2"]


@pytest.mark.parametrize("depth", [100_000, 500])
def test_deep_nesting_is_a_400_for_the_batch_or_a_rejected_event(partner, depth):
    _, secret = partner
    nested = "[" * depth + "]" * depth
    response = post('{"events": [' + nested + "]}", secret)
    if depth > 1000:  # past the interpreter's recursion limit: the body cannot be read at all
        assert response.status_code == 400
        error = response.json()["error"]
        assert set(error) == {"message", "type", "code", "param"}
        assert (error["type"], error["code"]) == ("invalid_request_error", "invalid")
    else:  # readable: that event is not an object
        assert response.status_code == 200
        assert response.json()["rejected"] == 1
    assert not PartnerUsageEvent.objects.exists()


def test_the_operators_event_admin_lists_events_after_a_hostile_batch(partner, admin_client):
    _, secret = partner
    post({"events": [event("ok-1"), *BAD_EVENTS.values()]}, secret)
    response = admin_client.get("/admin/partners/partnerusageevent/")
    assert response.status_code == 200
    assert b"ok-1" in response.content


@pytest.mark.django_db
def test_events_at_the_maximum_sum_into_a_statement():
    # Two events of 2^63-1 once made the month's statement impossible to issue; the maximum is now
    # 10^12 per event, and a batch full of maxima still issues.
    with time_machine.travel(datetime(2026, 1, 10, 9, tzinfo=UTC), tick=False):
        partner, secret = partners.partner_create(
            slug="bigco", name="BigCo", share_bps=1000, contact_email="billing@bigco.example"
        )
        top = partners.MAX_EVENT_COUNT
        big = [
            event(f"e-{i}", prompt_tokens=top, completion_tokens=top, amount_cents=top, time="2026-01-10T08:00:00Z")
            for i in range(1_000)
        ]
        assert post({"events": big}, secret).json()["accepted"] == 1_000
    statement = partner_statements.partner_statement_issue(
        partner=partner, month=datetime(2026, 1, 1).date(), now=datetime(2026, 2, 1, 1, tzinfo=UTC)
    )
    line = statement.lines.get()
    assert (line.events, line.prompt_tokens, line.revenue_cents) == (1_000, 1_000 * top, 1_000 * top)


@pytest.mark.django_db
def test_the_statement_task_starts_at_the_first_share_rate_month():
    # Defence in depth: an event dated year 1 that got in by some other way than the ingest (the
    # ingest refuses it) does not make the task issue a statement for every month since.
    with time_machine.travel(datetime(2026, 1, 10, 9, tzinfo=UTC), tick=False):
        partner, _ = partners.partner_create(
            slug="oldco", name="OldCo", share_bps=1000, contact_email="billing@oldco.example"
        )
    PartnerUsageEvent.objects.create(
        partner=partner,
        event_id="ancient",
        customer="acme",
        model="m",
        prompt_tokens=1,
        completion_tokens=1,
        amount_cents=1,
        currency="usd",
        occurred_at=datetime(1, 1, 1, tzinfo=UTC),
        received_at=timezone.now(),
    )
    issued = partner_statements.partner_statements_issue(now=datetime(2026, 4, 2, tzinfo=UTC))
    months = list(PartnerStatement.objects.order_by("month").values_list("month", flat=True))
    assert issued == 3
    assert [f"{m:%Y-%m}" for m in months] == ["2026-01", "2026-02", "2026-03"]
    # Nothing lost: the first statement claims the old event (as an adjustment line, at 0 bps).
    assert PartnerUsageEvent.objects.get().statement.month == months[0]


@pytest.mark.django_db
def test_an_operator_cannot_issue_a_statement_before_the_first_share_rate_month():
    """The task started at the first rate's month, but issuing by hand (the admin, a shell) did not:
    a statement for 2025-12 would have claimed the old events at 0 bps and blocked later months."""
    with time_machine.travel(datetime(2026, 1, 10, 9, tzinfo=UTC), tick=False):
        partner, _ = partners.partner_create(
            slug="newco", name="NewCo", share_bps=1000, contact_email="b@newco.example"
        )
    with pytest.raises(partners.PartnerError, match="before NewCo's first share rate"):
        partner_statements.partner_statement_issue(
            partner=partner, month=datetime(2025, 12, 1).date(), now=datetime(2026, 2, 2, tzinfo=UTC)
        )
    assert not PartnerStatement.objects.exists()
    statement = partner_statements.partner_statement_issue(
        partner=partner, month=datetime(2026, 1, 1).date(), now=datetime(2026, 2, 2, tzinfo=UTC)
    )
    assert f"{statement.month:%Y-%m}" == "2026-01"


def test_a_formula_model_is_escaped_in_the_statement_csv(partner, admin_client):
    p, secret = partner
    models = [FORMULA, "+1", "-1", "@SUM(A1)", "\tx", "\rx", "Llama-3.3-70B-Instruct"]
    events = [event(f"e-{i}", model=model) for i, model in enumerate(models)]
    assert post({"events": events}, secret).json()["accepted"] == len(models)
    month = timezone.now().date().replace(day=1)
    # Last month's last day: the partner was created today, and that is within the lateness allowed.
    PartnerUsageEvent.objects.update(occurred_at=datetime(month.year, month.month, 1, tzinfo=UTC) - timedelta(days=1))
    last_month = (month - timedelta(days=1)).replace(day=1)
    partners.partner_share_rate_set(partner=p, share_bps=1500, effective_from=last_month)
    statement = partner_statements.partner_statement_issue(partner=p, month=last_month)

    content = admin_client.get(f"/admin/partners/partnerstatement/{statement.pk}/csv/").content.decode()
    rows = list(csv.reader(io.StringIO(content)))
    cells = {row[4]: row for row in rows[1:]}
    assert set(cells) == {"'" + FORMULA, "'+1", "'-1", "'@SUM(A1)", "'\tx", "'\rx", "Llama-3.3-70B-Instruct"}
    numbers = [row[5:] for row in cells.values()]  # numbers stay numbers
    assert numbers == [["usd", "1500", "1", "100", "50", "12", "2"]] * len(models)
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for cell in row)


# --- Finding 7: webhook timestamps in the future, MAU months ----------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("ahead", "status"),
    [(timedelta(days=1), 400), (timedelta(minutes=6), 400), (timedelta(minutes=4), 200), (timedelta(0), 200)],
)
def test_a_webhook_signed_in_the_future_is_refused(client, settings, monkeypatch, ahead, status):
    monkeypatch.setattr("billing.payments.payment_outcome_record", lambda **kwargs: None)
    body = payment_intent_event()
    payload = json.dumps(body).encode()
    signature = sign(payload, settings.STRIPE_WEBHOOK_SECRET, int(time.time() + ahead.total_seconds()))
    response = deliver(client, body, secret=settings.STRIPE_WEBHOOK_SECRET, signature=signature)
    assert response.status_code == status, response.content
    if status == 400:
        assert response.json()["error"]["code"] == "invalid_signature"


@pytest.mark.parametrize(
    "month",
    ["0017-05", "0999-12", "1999-12", "10000-01", "+2026-01", "\uff12\uff10\uff12\uff16-01", "2026-\u0661\u0660"],
)
def test_an_mau_month_needs_a_four_digit_year_in_range(accounts, month):
    _, client = accounts["alice"]
    response = client.post(MAU, {"month": month, "active_users": 5}, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == "month"
    assert not MonthlyActiveUsers.objects.exists()


def test_an_mau_month_reads_back_as_it_was_sent(accounts):
    _, client = accounts["alice"]
    response = client.post(MAU, {"month": "2000-01", "active_users": 5}, content_type="application/json")
    assert response.status_code == 201, response.content
    assert response.json()["month"] == "2000-01"
    assert client.get(MAU).json()["results"][0]["month"] == "2000-01"
