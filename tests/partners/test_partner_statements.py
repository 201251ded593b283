"""Monthly partner statements: lines by share rate in force, late events as adjustments, exactly one
statement per (partner, month), CSV and email."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime

import pytest
import time_machine
from django.core import mail

from accounts.selectors import team_for_user
from core.errors import ApplicationError
from partners import services as partners
from partners import statements as partner_statements
from partners import tasks
from partners.models import PartnerStatement, PartnerStatementLine, PartnerUsageEvent
from tests.factories import UsageRecordFactory
from tiers import services as tier_services

BIG = "Llama-3.3-70B-Instruct"
SMALL = "Llama-3.3-8B-Instruct"


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def partner(db):
    with time_machine.travel(at(2026, 1, 10, 9), tick=False):
        partner, _ = partners.partner_create(
            slug="cloudco", name="CloudCo", share_bps=1000, contact_email="billing@cloudco.example"
        )
    return partner


def ingest(partner, *events, now: datetime) -> dict:
    """Report events given as (event id, time, amount cents[, model[, currency]])."""
    rows = [
        {
            "event_id": e[0],
            "customer": "acme",
            "model": e[3] if len(e) > 3 else BIG,
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "amount_cents": e[2],
            "currency": e[4] if len(e) > 4 else "usd",
            "time": e[1].isoformat(),
        }
        for e in events
    ]
    result = partners.partner_usage_events_ingest(partner_id=partner.pk, events=rows, now=now).as_dict()
    assert result["rejected"] == 0, result
    return result


def lines_of(statement) -> list[tuple]:
    return list(
        statement.lines.order_by("id").values_list(
            "kind", "usage_month", "model", "currency", "share_bps", "events", "revenue_cents", "share_cents"
        )
    )


def test_share_cents_rounds_half_up():
    assert partner_statements.share_cents(revenue_cents=5, share_bps=1000) == 1  # 0.5
    assert partner_statements.share_cents(revenue_cents=4, share_bps=1000) == 0  # 0.4
    assert partner_statements.share_cents(revenue_cents=15, share_bps=1000) == 2  # 1.5
    assert partner_statements.share_cents(revenue_cents=10_000, share_bps=1725) == 1725


def test_a_share_change_mid_month_splits_the_month_by_effective_date(partner):
    partners.partner_share_rate_set(partner=partner, share_bps=2000, effective_from=date(2026, 2, 15))
    ingest(
        partner,
        ("a", at(2026, 2, 1, 0, 0), 1000),  # first instant of the month: 10%
        ("b", at(2026, 2, 14, 23, 59, 59), 1005),  # last second before the change: 10%
        ("c", at(2026, 2, 15, 0, 0), 2000),  # the change's first instant: 20%
        ("d", at(2026, 2, 28, 23, 59), 3),  # 0.6 -> 1
        ("e", at(2026, 2, 20), 500, SMALL),
        ("f", at(2026, 3, 1, 0, 0), 999_999),  # next month: not on February's statement
        now=at(2026, 3, 1, 1),
    )
    statement = partner_statements.partner_statement_issue(partner=partner, month=date(2026, 2, 1), now=at(2026, 3, 2))
    feb = date(2026, 2, 1)
    assert lines_of(statement) == [
        ("usage", feb, BIG, "usd", 1000, 2, 2005, 201),  # 200.5 rounds half up
        ("usage", feb, BIG, "usd", 2000, 2, 2003, 401),  # 400.6
        ("usage", feb, SMALL, "usd", 2000, 1, 500, 100),
    ]
    assert PartnerUsageEvent.objects.filter(statement=statement).count() == 5
    assert PartnerUsageEvent.objects.get(event_id="f").statement_id is None
    totals = partner_statements.partner_statement_totals(statement=statement)
    assert [(t["currency"], t["revenue_cents"], t["share_cents"]) for t in totals] == [("usd", 4508, 702)]


def test_late_events_become_adjustment_lines_on_the_next_statement(partner):
    partners.partner_share_rate_set(partner=partner, share_bps=3000, effective_from=date(2026, 3, 1))
    ingest(partner, ("feb-1", at(2026, 2, 10), 1000), now=at(2026, 2, 11))
    feb = partner_statements.partner_statement_issue(partner=partner, month=date(2026, 2, 1), now=at(2026, 3, 1, 0, 5))
    feb_lines = lines_of(feb)
    assert feb_lines == [("usage", date(2026, 2, 1), BIG, "usd", 1000, 1, 1000, 100)]

    # Arrives after February closed; also a resend of an event already stated, and March usage.
    result = ingest(
        partner,
        ("feb-late", at(2026, 2, 27), 400),
        ("jan-late", at(2026, 1, 31, 23), 50, BIG, "eur"),
        ("feb-1", at(2026, 2, 10), 1000),
        ("mar-1", at(2026, 3, 3), 700),
        now=at(2026, 3, 5),
    )
    assert (result["accepted"], result["duplicates"]) == (3, 1)
    mar = partner_statements.partner_statement_issue(partner=partner, month=date(2026, 3, 1), now=at(2026, 4, 1, 0, 5))
    assert lines_of(mar) == [
        ("usage", date(2026, 3, 1), BIG, "usd", 3000, 1, 700, 210),
        ("adjustment", date(2026, 1, 1), BIG, "eur", 1000, 1, 50, 5),
        ("adjustment", date(2026, 2, 1), BIG, "usd", 1000, 1, 400, 40),  # February's rate, not March's
    ]
    assert lines_of(feb) == feb_lines  # the closed statement is unchanged
    assert PartnerUsageEvent.objects.filter(statement__isnull=True).count() == 0
    # Every event is on exactly one statement, and the lines add up to the events.
    assert sum(PartnerStatementLine.objects.values_list("revenue_cents", flat=True)) == sum(
        PartnerUsageEvent.objects.values_list("amount_cents", flat=True)
    )


def test_issuing_twice_gives_one_statement_and_the_month_must_be_over(partner):
    ingest(partner, ("a", at(2026, 2, 10), 1000), now=at(2026, 2, 11))
    first = partner_statements.partner_statement_issue(partner=partner, month=date(2026, 2, 1), now=at(2026, 3, 1, 1))
    ingest(partner, ("b", at(2026, 2, 11), 1000), now=at(2026, 3, 1, 2))
    again = partner_statements.partner_statement_issue(partner=partner, month=date(2026, 2, 14), now=at(2026, 3, 1, 3))
    assert again.pk == first.pk
    assert lines_of(again) == [("usage", date(2026, 2, 1), BIG, "usd", 1000, 1, 1000, 100)]
    assert PartnerUsageEvent.objects.get(event_id="b").statement_id is None  # left for the next statement
    with pytest.raises(ApplicationError, match="not over"):
        partner_statements.partner_statement_issue(partner=partner, month=date(2026, 3, 1), now=at(2026, 3, 31, 23))
    with pytest.raises(ApplicationError, match="in order"):
        partner_statements.partner_statement_issue(partner=partner, month=date(2026, 1, 1), now=at(2026, 3, 31, 23))


def test_the_beat_task_issues_every_closed_month_once_and_emails_each(partner, django_capture_on_commit_callbacks):
    ingest(partner, ("a", at(2026, 2, 10), 1000), ("b", at(2026, 3, 31, 23, 59), 10), now=at(2026, 4, 1))
    with time_machine.travel(at(2026, 4, 1, 0, 10), tick=False):
        with django_capture_on_commit_callbacks(execute=True):
            assert tasks.partner_statements_issue() == 3  # January (created), February, March
        with django_capture_on_commit_callbacks(execute=True):
            assert tasks.partner_statements_issue() == 0
    months = sorted(PartnerStatement.objects.values_list("month", flat=True))
    assert months == [date(2026, 1, 1), date(2026, 2, 1), date(2026, 3, 1)]
    assert PartnerStatement.objects.get(month=date(2026, 1, 1)).lines.count() == 0
    assert len(mail.outbox) == 3
    assert all(s.emailed_at == at(2026, 4, 1, 0, 10) for s in PartnerStatement.objects.all())
    march = next(m for m in mail.outbox if "2026-03" in m.subject)
    assert march.to == ["billing@cloudco.example"]
    assert "Total owed (USD): $0.01 of $0.10 revenue" in march.body
    filename, content, mimetype = march.attachments[0]
    assert (filename, mimetype) == ("tierlab-statement-cloudco-2026-03.csv", "text/csv")
    assert list(csv.reader(io.StringIO(content)))[1][2:8] == ["usage", "2026-03", BIG, "usd", "1000", "1"]


def test_an_email_that_failed_is_sent_by_the_next_pass(partner, settings):
    settings.EMAIL_BACKEND = "tests.usage.test_partner_statements.FailingBackend"
    with time_machine.travel(at(2026, 2, 1, 0, 10), tick=False):
        partner_statements.partner_statements_issue()
    statement = PartnerStatement.objects.get()
    partner_statements.partner_statement_email_send(statement_id=statement.pk)
    assert PartnerStatement.objects.get().emailed_at is None
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    with time_machine.travel(at(2026, 2, 1, 1), tick=False):
        assert partner_statements.partner_statements_issue() == 0
    assert PartnerStatement.objects.get().emailed_at == at(2026, 2, 1, 1)
    assert len(mail.outbox) == 1
    # Emailed once: a plain send does nothing more, "email again" (force) sends without moving emailed_at.
    assert partner_statements.partner_statement_email_send(statement_id=statement.pk) is False
    assert partner_statements.partner_statement_email_send(statement_id=statement.pk, force=True) is True
    assert len(mail.outbox) == 2
    assert PartnerStatement.objects.get().emailed_at == at(2026, 2, 1, 1)


class FailingBackend:
    def __init__(self, *args, **kwargs):
        pass

    def send_messages(self, messages):
        raise ConnectionRefusedError("mail server down")


def test_direct_traffic_through_the_partner_channel_is_a_direct_line(partner, catalog):
    user = tier_services.user_create(email="dev@example.com")
    team = team_for_user(user=user)
    key, _ = partners.partner_channel_key_create(partner=partner, team=team, name="app")
    for i, when in enumerate([at(2026, 2, 3), at(2026, 2, 27), at(2026, 3, 1)]):
        UsageRecordFactory(
            request_id=f"r{i}", team=team, api_key=key, model=SMALL, prompt_tokens=10, completion_tokens=20,
            partner_id=partner.pk, created_at=when,
        )  # fmt: skip
    UsageRecordFactory(  # the same team without the partner channel: not the partner's
        request_id="own", team=team, model=SMALL, prompt_tokens=1, completion_tokens=1, created_at=at(2026, 2, 5)
    )
    statement = partner_statements.partner_statement_issue(partner=partner, month=date(2026, 2, 1), now=at(2026, 3, 2))
    line = statement.lines.get()
    assert (line.kind, line.model, line.events, line.prompt_tokens, line.completion_tokens) == (
        "direct",
        SMALL,
        2,
        20,
        40,
    )
    assert (line.revenue_cents, line.share_cents) == (0, 0)


def test_csv_has_a_header_and_one_row_per_line(partner):
    ingest(partner, ("a", at(2026, 2, 10), 1000), ("b", at(2026, 2, 10), 20, SMALL), now=at(2026, 2, 11))
    statement = partner_statements.partner_statement_issue(partner=partner, month=date(2026, 2, 1), now=at(2026, 3, 2))
    rows = list(csv.reader(io.StringIO(partner_statements.partner_statement_csv(statement=statement))))
    assert rows[0] == list(partner_statements.CSV_COLUMNS)
    assert rows[1:] == [
        ["cloudco", "2026-02", "usage", "2026-02", BIG, "usd", "1000", "1", "10", "5", "1000", "100"],
        ["cloudco", "2026-02", "usage", "2026-02", SMALL, "usd", "1000", "1", "10", "5", "20", "2"],
    ]


# --- Admin ----------------------------------------------------------------------------------------------


def test_admin_statement_pages_csv_and_email_again(partner, admin_client):
    ingest(partner, ("a", at(2026, 2, 10), 1000), now=at(2026, 2, 11))
    statement = partner_statements.partner_statement_issue(partner=partner, month=date(2026, 2, 1), now=at(2026, 3, 2))
    assert admin_client.get("/admin/partners/partnerstatement/").status_code == 200
    page = admin_client.get(f"/admin/partners/partnerstatement/{statement.pk}/change/")
    assert page.status_code == 200
    assert b"$1.00 owed of $10.00" in page.content
    response = admin_client.get(f"/admin/partners/partnerstatement/{statement.pk}/csv/")
    assert response["Content-Type"] == "text/csv"
    assert response.content.decode() == partner_statements.partner_statement_csv(statement=statement)
    # Read-only: a POST to the change page changes nothing.
    admin_client.post(f"/admin/partners/partnerstatement/{statement.pk}/change/", {"month": "2020-01-01"})
    assert PartnerStatement.objects.get().month == date(2026, 2, 1)
    admin_client.post(
        "/admin/partners/partnerstatement/",
        {"action": "email_again", "_selected_action": [statement.pk]},
    )
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["billing@cloudco.example"]
    assert admin_client.get("/admin/partners/partnerusageevent/").status_code == 200


def test_admin_issue_key_action_shows_the_secret_once(partner, admin_client):
    response = admin_client.post(
        "/admin/partners/partner/", {"action": "issue_key", "_selected_action": [partner.pk]}, follow=True
    )
    shown = [str(m) for m in response.context["messages"]]
    secret = shown[0].rsplit(" ", 1)[-1]
    assert secret.startswith("tlp-")
    assert partners.partner_key_authenticate(raw_key=secret).partner_id == partner.pk
    assert admin_client.get(f"/admin/partners/partner/{partner.pk}/change/").status_code == 200
    assert admin_client.get("/admin/partners/partner/").status_code == 200
    assert admin_client.get("/admin/partners/partner/add/").status_code == 200


def _partner_form(partner, rates: list[tuple[str, int, int | None]], *, delete: set[int] = frozenset()) -> dict:
    data = {
        "name": partner.name,
        "slug": partner.slug,
        "contact_email": partner.contact_email,
        "is_active": "on",
        "share_rates-TOTAL_FORMS": str(len(rates)),
        "share_rates-INITIAL_FORMS": str(sum(1 for r in rates if r[2])),
        "share_rates-MIN_NUM_FORMS": "0",
        "share_rates-MAX_NUM_FORMS": "1000",
        "keys-TOTAL_FORMS": "0",
        "keys-INITIAL_FORMS": "0",
        "keys-MIN_NUM_FORMS": "0",
        "keys-MAX_NUM_FORMS": "1000",
    }
    for i, (day, bps, rate_id) in enumerate(rates):
        data[f"share_rates-{i}-effective_from"] = day
        data[f"share_rates-{i}-share_bps"] = str(bps)
        data[f"share_rates-{i}-partner"] = str(partner.pk)
        if rate_id:
            data[f"share_rates-{i}-id"] = str(rate_id)
        if rate_id in delete:
            data[f"share_rates-{i}-DELETE"] = "on"
    return data


def test_admin_share_rate_inline_refuses_dates_on_issued_statements(partner, admin_client):
    partner_statements.partner_statement_issue(partner=partner, month=date(2026, 2, 1), now=at(2026, 3, 2))
    first = partner.share_rates.get()
    url = f"/admin/partners/partner/{partner.pk}/change/"
    refused = admin_client.post(
        url, _partner_form(partner, [("2026-01-10", 1000, first.pk), ("2026-02-20", 3000, None)])
    )
    assert refused.status_code == 200 and b"on issued statements" in refused.content
    changed = admin_client.post(url, _partner_form(partner, [("2026-01-10", 1, first.pk)]))
    assert changed.status_code == 200 and b"on issued statements" in changed.content
    assert partners.share_rates_for(partner_id=partner.pk) == [(date(2026, 1, 10), 1000)]
    accepted = admin_client.post(
        url, _partner_form(partner, [("2026-01-10", 1000, first.pk), ("2026-03-01", 3000, None)])
    )
    assert accepted.status_code == 302
    assert partners.share_rates_for(partner_id=partner.pk) == [(date(2026, 1, 10), 1000), (date(2026, 3, 1), 3000)]
