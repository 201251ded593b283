"""Operator analytics on usage and channels (usage/analytics.py, partners/analytics.py), on top of the money history of
tests/tiers/test_analytics.py: rollups, refusal counts, partner statements and licences with figures
worked out by hand, every one checked exactly."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from html import unescape

import pytest
import time_machine
from django.urls import reverse

from accounts.models import Membership, Team
from accounts.selectors import team_for_user
from billing.analytics import month_window
from partners import analytics
from partners.models import LicenseAgreement, Partner, PartnerStatement, PartnerStatementLine
from tests.billing.test_analytics import NOW, WINDOW_MONTHS, money_history
from tiers.services import operator_ensure, user_create
from usage import analytics as usage_analytics
from usage.models import QuotaRefusalCount, UsageRollup


def _at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def rollup(team: Team, day: datetime, *, tokens: int, requests: int, granularity: str = "day", **extra) -> None:
    UsageRollup.objects.create(
        granularity=granularity,
        bucket_start=day,
        team=team,
        model=extra.pop("model", "Llama-3.3-70B-Instruct"),
        requests=requests,
        prompt_tokens=tokens // 2,
        completion_tokens=tokens - tokens // 2,
        total_tokens=tokens,
        **extra,
    )


def refusals(team: Team, hour: datetime, tier_slug: str, code: str, count: int) -> None:
    QuotaRefusalCount.objects.create(hour=hour, team=team, tier_slug=tier_slug, code=code, count=count)


def statement_line(statement: PartnerStatement, *, share: int, kind: str = "usage", usage_month: date | None = None):
    PartnerStatementLine.objects.create(
        statement=statement,
        kind=kind,
        usage_month=usage_month or statement.month,
        model="Llama-3.3-70B-Instruct",
        currency="usd",
        share_bps=1500,
        events=3,
        prompt_tokens=100,
        completion_tokens=200,
        revenue_cents=share * 100 // 15,
        share_cents=share,
    )


def licence(team: Team, *, status: str, fee: int, decided_at: datetime | None) -> LicenseAgreement:
    return LicenseAgreement.objects.create(
        team=team,
        status=status,
        required_from=date(2026, 1, 1),
        reported_mau=800_000_000,
        mau_month=date(2025, 12, 1),
        monthly_fee_cents=fee,
        decided_at=decided_at,
        created_at=_at(2025, 1, 1),
    )


def usage_history(teams: dict[str, Team]) -> None:
    """Rollups, refusals, partner statements and licences over the money history's teams."""
    # Tokens (day rollups in the window): carol 12,000 + 3,000 through a partner key = 15,000 in 4
    # requests; dave 7,000 in 7 (on the window's first instant); alice 5,000 in 5 (two models);
    # erin and heidi 1,000 each (a tie: lower team id first). Hour rollups are the same usage at
    # another granularity and are not added; frank's day before the window is left out.
    rollup(teams["carol"], _at(2026, 3, 10), tokens=12_000, requests=3)
    rollup(teams["carol"], _at(2026, 3, 10), tokens=3_000, requests=1, partner_id=7, api_key_id=3)
    rollup(teams["carol"], _at(2026, 3, 10, 9), tokens=15_000, requests=4, granularity="hour")
    rollup(teams["dave"], _at(2025, 7, 1), tokens=7_000, requests=7)
    rollup(teams["alice"], _at(2026, 6, 1), tokens=4_000, requests=4)
    rollup(teams["alice"], _at(2026, 6, 1), tokens=1_000, requests=1, model="Llama-3.3-8B-Instruct")
    rollup(teams["heidi"], _at(2026, 5, 2), tokens=1_000, requests=1)
    rollup(teams["erin"], _at(2026, 5, 2), tokens=1_000, requests=2)
    rollup(teams["frank"], _at(2025, 6, 30), tokens=100_000, requests=100)

    # Refusals: free 5 + 3 insufficient_quota and 2 rate_limit_exceeded; pro 4 rate_limit_exceeded
    # and 1 subscription_inactive; one hour before the window left out.
    refusals(teams["frank"], _at(2026, 6, 1, 10), "free", "insufficient_quota", 5)
    refusals(teams["frank"], _at(2026, 6, 1, 11), "free", "insufficient_quota", 3)
    refusals(teams["frank"], _at(2026, 6, 1, 11), "free", "rate_limit_exceeded", 2)
    refusals(teams["carol"], _at(2026, 2, 3, 0), "pro", "rate_limit_exceeded", 4)
    refusals(teams["dave"], _at(2026, 5, 9, 23), "pro", "subscription_inactive", 1)
    refusals(teams["frank"], _at(2025, 6, 30, 23), "free", "insufficient_quota", 100)

    # Partner shares: March's statements 1,500 + a 250 adjustment for February's late events (counted
    # in March, where it was billed) + another partner's 900 = 2,650; April 400; June 2025 left out.
    cloud = Partner.objects.create(name="Cloud A", slug="cloud-a", contact_email="a@cloud.example")
    other = Partner.objects.create(name="Cloud B", slug="cloud-b", contact_email="b@cloud.example")
    march = PartnerStatement.objects.create(partner=cloud, month=date(2026, 3, 1), issued_at=_at(2026, 4, 1, 1))
    statement_line(march, share=1_500)
    statement_line(march, share=250, kind="adjustment", usage_month=date(2026, 2, 1))
    march_b = PartnerStatement.objects.create(partner=other, month=date(2026, 3, 1), issued_at=_at(2026, 4, 1, 1))
    statement_line(march_b, share=900)
    april = PartnerStatement.objects.create(partner=cloud, month=date(2026, 4, 1), issued_at=_at(2026, 5, 1, 1))
    statement_line(april, share=400)
    old = PartnerStatement.objects.create(partner=cloud, month=date(2025, 6, 1), issued_at=_at(2025, 7, 1, 1))
    statement_line(old, share=777)

    # Licences: frank's granted 2026-02-10 (50,000 a month from February on); bob's granted in May
    # 2025, before the window (10,000 in every month of it); grace's refused and carol's requested
    # earn nothing.
    licence(teams["frank"], status="granted", fee=50_000, decided_at=_at(2026, 2, 10, 16))
    licence(teams["bob"], status="granted", fee=10_000, decided_at=_at(2025, 5, 3))
    licence(teams["grace"], status="refused", fee=30_000, decided_at=_at(2026, 3, 1))
    licence(teams["carol"], status="requested", fee=20_000, decided_at=None)


@pytest.fixture
def history(catalog):
    with time_machine.travel(NOW, tick=False):
        teams = money_history(catalog)
        usage_history(teams)
        yield teams


def _window(months: int = 12):
    return month_window(months=months, now=NOW)


# --- Top customers -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_top_customers_by_tokens(history, django_assert_num_queries):
    window = _window()
    with django_assert_num_queries(2):
        top = usage_analytics.top_customers_by_tokens(start=window.start, end=window.end)
    assert [(c.team_id, c.team_name, c.owner_email, c.total_tokens, c.requests) for c in top] == [
        (history["carol"].pk, "carol@example.com's team", "carol@example.com", 15_000, 4),
        (history["dave"].pk, "dave@example.com's team", "dave@example.com", 7_000, 7),
        (history["alice"].pk, "alice@example.com's team", "alice@example.com", 5_000, 5),
        (history["erin"].pk, "erin@example.com's team", "erin@example.com", 1_000, 2),
        (history["heidi"].pk, "heidi@example.com's team", "heidi@example.com", 1_000, 1),
    ]
    assert history["erin"].pk < history["heidi"].pk


@pytest.mark.django_db
def test_top_customers_limit_range_and_owner(history):
    window = _window()
    assert [
        c.team_id for c in usage_analytics.top_customers_by_tokens(start=window.start, end=window.end, limit=2)
    ] == [
        history["carol"].pk,
        history["dave"].pk,
    ]
    # 13 months reach frank's day in June 2025.
    wide = _window(13)
    first = usage_analytics.top_customers_by_tokens(start=wide.start, end=wide.end)[0]
    assert (first.team_id, first.total_tokens, first.requests) == (history["frank"].pk, 100_000, 100)
    # A team with a second (later) owner shows its first owner; a team without an owner shows "".
    later = user_create(email="zed@example.com", password="correct-horse-battery-9")
    Membership.objects.create(user=later, team=history["carol"], role=Membership.Role.OWNER)
    Membership.objects.filter(team=history["dave"]).update(role=Membership.Role.MEMBER)
    owners = {
        c.team_id: c.owner_email for c in usage_analytics.top_customers_by_tokens(start=window.start, end=window.end)
    }
    assert owners[history["carol"].pk] == "carol@example.com"
    assert owners[history["dave"].pk] == ""
    assert usage_analytics.top_customers_by_tokens(start=_at(2030, 1, 1), end=_at(2030, 2, 1)) == []


# --- Refusals ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_quota_refusals_by_tier_and_code(history, django_assert_num_queries):
    window = _window()
    with django_assert_num_queries(1):
        report = usage_analytics.quota_refusals_by_tier(start=window.start, end=window.end)
    assert report.codes == ["insufficient_quota", "rate_limit_exceeded", "subscription_inactive"]
    assert [(t.tier_slug, t.by_code, t.total) for t in report.tiers] == [
        ("free", {"insufficient_quota": 8, "rate_limit_exceeded": 2}, 10),
        ("pro", {"rate_limit_exceeded": 4, "subscription_inactive": 1}, 5),
    ]
    assert report.total == 15
    wide = _window(13)
    assert (
        usage_analytics.quota_refusals_by_tier(start=wide.start, end=wide.end).tiers[0].by_code["insufficient_quota"]
        == 108
    )


# --- Partner share, licence fees, channels -------------------------------------------------------------


@pytest.mark.django_db
def test_partner_share_by_statement_month(history, django_assert_num_queries):
    with django_assert_num_queries(1):
        shares = analytics.partner_share_by_month(window=_window())
    assert shares == {("usd", date(2026, 3, 1)): 2_650, ("usd", date(2026, 4, 1)): 400}
    assert analytics.partner_share_by_month(window=_window(13))[("usd", date(2025, 6, 1))] == 777


@pytest.mark.django_db
def test_license_fees_accrue_every_month_from_the_grant(history, django_assert_num_queries):
    with django_assert_num_queries(1):
        fees = analytics.license_fees_by_month(window=_window())
    feb = date(2026, 2, 1)
    assert fees == {("usd", m): 10_000 + (50_000 if m >= feb else 0) for m in WINDOW_MONTHS}
    # A window that ends before frank's grant has bob's fee only.
    before = analytics.license_fees_by_month(window=month_window(months=2, now=_at(2026, 1, 31, 23, 59)))
    assert before == {("usd", date(2025, 12, 1)): 10_000, ("usd", date(2026, 1, 1)): 10_000}
    # A window before any grant: nothing.
    assert analytics.license_fees_by_month(window=month_window(months=3, now=_at(2025, 4, 30))) == {}


@pytest.mark.django_db
def test_revenue_by_channel_by_month(history, django_assert_num_queries):
    with django_assert_num_queries(4):
        report = analytics.revenue_by_channel(window=_window())
    assert list(report) == ["eur", "usd"]
    table = {
        currency: {
            r.month: (r.direct_subscriptions, r.direct_overage, r.partner_share, r.license_fees, r.total) for r in rows
        }
        for currency, rows in report.items()
    }
    licence_only = (0, 0, 0, 10_000, 10_000)
    assert table["usd"] == dict.fromkeys(WINDOW_MONTHS, licence_only) | {
        date(2026, 1, 1): (19_000, 0, 0, 10_000, 29_000),
        date(2026, 2, 1): (20_000, 0, 0, 60_000, 80_000),
        date(2026, 3, 1): (20_000, 1_234, 2_650, 60_000, 83_884),
        date(2026, 4, 1): (8_000, 0, 400, 60_000, 68_400),
        date(2026, 5, 1): (0, 0, 0, 60_000, 60_000),
        date(2026, 6, 1): (0, 0, 0, 60_000, 60_000),
    }
    assert table["eur"] == dict.fromkeys(WINDOW_MONTHS, (0, 0, 0, 0, 0)) | {
        date(2026, 5, 1): (18_000, 500, 0, 0, 18_500)
    }


# --- The whole dashboard -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_operator_dashboard_is_a_fixed_number_of_queries(history, django_assert_num_queries):
    with django_assert_num_queries(10):
        dashboard = analytics.operator_dashboard(months=12, now=NOW)
    assert dashboard.window.months == WINDOW_MONTHS
    assert dashboard.mrr.mrr_by_currency == {"usd": 43_667, "eur": 18_000}
    assert dashboard.top_customers[0].total_tokens == 15_000
    assert dashboard.refusals.total == 15
    assert sum(r.net_cents for r in dashboard.revenue["usd"]) == 19_000 + 20_000 + 21_234 + 3_000
    assert (
        sum(r.total for r in dashboard.channels["usd"]) == 29_000 + 80_000 + 83_884 + 68_400 + 60_000 * 2 + 10_000 * 6
    )
    assert [p.failure_code for p in dashboard.failed_payments.latest] == ["expired_card", "card_declined"]
    # More customers (with usage, refusals and failures) do not add queries.
    for n in range(30):
        team = team_for_user(user=user_create(email=f"bulk{n}@example.com", password="correct-horse-battery-9"))
        rollup(team, _at(2026, 6, 2), tokens=10 + n, requests=1)
        refusals(team, _at(2026, 6, 2), "free", "rate_limit_exceeded", 1)
    with django_assert_num_queries(10):
        analytics.operator_dashboard(months=12, now=NOW)


# --- The admin page ------------------------------------------------------------------------------------

ANALYTICS_URL = "/admin/analytics/"


def _row(html: str, marker: str) -> str:
    """The table row whose opening tag carries ``marker`` (e.g. 'data-tier="pro"'), tags stripped."""
    match = re.search(rf"<tr {re.escape(marker)}>(.*?)</tr>", html, re.S)
    assert match, f"no row {marker}"
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", match.group(1))).split())


def _table(html: str, table_id: str) -> str:
    match = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S)
    assert match, f"no table {table_id}"
    return match.group(1)


def _section(html: str, section_id: str) -> str:
    match = re.search(rf'<section class="analytics-section" id="{section_id}">(.*?)</section>', html, re.S)
    assert match, f"no section {section_id}"
    return match.group(1)


@pytest.fixture
def operator(client, catalog):
    operator_ensure(email="ops@example.com", password="operator-password-1")
    client.login(email="ops@example.com", password="operator-password-1")
    return client


@pytest.mark.django_db
def test_analytics_page_is_for_staff_only(client, catalog):
    assert reverse("admin-analytics") == ANALYTICS_URL
    response = client.get(ANALYTICS_URL)
    assert response.status_code == 302 and response["Location"] == f"/admin/login/?next={ANALYTICS_URL}"
    user_create(email="customer@example.com", password="correct-horse-battery-9")
    client.login(email="customer@example.com", password="correct-horse-battery-9")
    response = client.get(ANALYTICS_URL)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


@pytest.mark.django_db
def test_admin_index_links_to_the_analytics_page(operator):
    html = operator.get("/admin/").content.decode()
    assert 'id="analytics-card"' in html and f'href="{ANALYTICS_URL}"' in html
    assert 'id="content-main"' in html  # the admin's app list is still there, after the card


@pytest.mark.django_db
def test_analytics_page_shows_every_figure(operator, history, django_assert_max_num_queries):
    with time_machine.travel(NOW, tick=False), django_assert_max_num_queries(12):
        response = operator.get(ANALYTICS_URL)
    assert response.status_code == 200
    html = response.content.decode()
    # The admin's look (each_context): its header and breadcrumbs.
    assert "TierLab operations" in html and 'class="breadcrumbs"' in html
    assert response.context["dashboard"].window.months == WINDOW_MONTHS
    kpis = _section(html, "mrr")  # the table under the charts
    assert _row(kpis, 'data-tier="pro"') == "Pro month $200.00 $200.00 0 1 1 1 3 $400.00"
    assert _row(kpis, 'data-tier="plus-annual"') == "Plus (annual) year $199.98 $16.67 0 1 0 0 1 $16.67"
    assert _row(kpis, 'data-tier="plus"') == "Plus month $20.00 $20.00 1 1 0 0 2 $20.00"
    assert _row(kpis, 'data-tier="pro-eu"') == "Pro (EU) month €180.00 €180.00 0 1 0 0 1 €180.00"
    assert 'data-kpi="mrr-usd">MRR (USD)<strong>$436.67</strong>' in html
    assert 'data-kpi="mrr-eur">MRR (EUR)<strong>€180.00</strong>' in html
    # The history's 8 current subscriptions and the operator's own (free) personal team.
    assert 'data-kpi="subscribers">Current subscribers<strong>9</strong>' in html
    assert _row(kpis, 'data-tier="free"') == "Free month $0.00 $0.00 0 2 0 0 2 $0.00"

    revenue = _table(html, "revenue-table-usd")
    assert _row(revenue, 'data-month="2026-03"') == "Mar 2026 $200.00 $12.34 $0.00 $212.34"
    assert _row(revenue, 'data-month="2026-04"') == "Apr 2026 $80.00 $0.00 -$50.00 $30.00"
    assert _row(revenue, 'data-month="2025-07"') == "Jul 2025 $0.00 $0.00 $0.00 $0.00"
    assert revenue.count("<tr data-month=") == 12
    euros = _table(html, "revenue-table-eur")
    assert _row(euros, 'data-month="2026-05"') == "May 2026 €180.00 €5.00 €0.00 €185.00"

    channels = _table(html, "channels-table-usd")
    assert _row(channels, 'data-month="2026-03"') == "Mar 2026 $200.00 $12.34 $26.50 $600.00 $838.84"
    assert _row(channels, 'data-month="2025-08"') == "Aug 2025 $0.00 $0.00 $0.00 $100.00 $100.00"
    euro_channels = _table(html, "channels-table-eur")
    assert _row(euro_channels, 'data-month="2026-05"') == "May 2026 €180.00 €5.00 €0.00 €0.00 €185.00"

    top = _section(html, "top-customers")
    assert _row(top, f'data-team="{history["carol"].pk}"') == "1 carol@example.com's team carol@example.com 15,000 4"
    assert _row(top, f'data-team="{history["heidi"].pk}"') == "5 heidi@example.com's team heidi@example.com 1,000 1"

    refused = _section(html, "refusals")
    assert "insufficient_quota" in refused and "subscription_inactive" in refused
    assert _row(refused, 'data-tier="free"') == "free 8 2 0 10"
    assert _row(refused, 'data-tier="pro"') == "pro 0 4 1 5"

    failed = _section(html, "failed-payments")
    assert _row(failed, 'data-month="2026-05"') == "May 2026 1 $200.00"
    latest = re.findall(r"<tr data-payment=", failed)
    assert len(latest) == 2 and "expired_card" in failed and "card_declined" in failed
    # A chart per figure, each an inline SVG (nothing loaded from elsewhere).
    assert html.count("<svg") >= 8
    assert "http://" not in re.sub(r'xmlns(:\w+)?="http://[^"]+"', "", html)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("months", "shown", "warned"),
    [
        ("3", 3, False),
        ("5", 5, False),
        ("36", 36, False),
        ("abc", 12, True),
        ("0", 12, True),
        ("37", 12, True),
        ("", 12, True),
    ],
)
def test_analytics_page_range(operator, history, months, shown, warned):
    with time_machine.travel(NOW, tick=False):
        response = operator.get(ANALYTICS_URL, {"months": months})
    assert response.status_code == 200
    assert len(response.context["dashboard"].window.months) == shown
    html = response.content.decode()
    assert ("The range must be a whole number of months from 1 to 36" in html) is warned
    assert f'<option value="{shown}" selected>' in html
