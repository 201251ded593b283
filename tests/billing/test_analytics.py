"""Operator analytics on money (billing/analytics.py): a known history, and every figure checked exactly.

The history (``money_history``) is also what the usage analytics, the admin page and the browser test
build on; its figures are worked out by hand in the comments next to each row.
"""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime

import pytest
import time_machine

from accounts.models import Team
from accounts.selectors import team_for_user
from billing import analytics
from billing.models import Invoice, InvoiceLine, Payment, Refund
from tiers.models import Subscription, Tier
from tiers.services import user_create

# The frozen "now" of every analytics test: mid-June 2026. The default 12-month window is then
# Jul 2025 .. Jun 2026, i.e. [2025-07-01T00:00Z, 2026-07-01T00:00Z).
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
WINDOW_MONTHS = tuple(date(2025 + (6 + i) // 12, (6 + i) % 12 + 1, 1) for i in range(12))

_keys = itertools.count(1)


def _at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def team_of(email: str, tier: Tier, status: str) -> Team:
    """A user's personal team (owner: ``email``) whose subscription is on ``tier`` with ``status``."""
    user = user_create(email=email, password="correct-horse-battery-9")
    team = team_for_user(user=user)
    Subscription.objects.filter(team=team).update(tier=tier, status=status)
    return team


def paid_invoice(
    team: Team, *, paid_at: datetime | None, lines: list[tuple[str, int]], currency: str = "usd", status: str = "paid"
) -> Invoice:
    """An invoice of ``team`` with ``lines`` (kind, cents), paid at ``paid_at`` (or in ``status``)."""
    n = next(_keys)
    issued = paid_at or NOW
    invoice = Invoice.objects.create(
        number=f"TL-T{n:06d}",
        billing_key=f"analytics:{n}",
        team=team,
        subscription=Subscription.objects.filter(team=team).latest("id"),
        kind=Invoice.Kind.RENEWAL,
        status=status,
        currency=currency,
        total_cents=sum(cents for _, cents in lines),
        period_start=issued,
        period_end=issued.replace(year=issued.year + 1),
        issued_at=issued,
        paid_at=paid_at,
    )
    InvoiceLine.objects.bulk_create(
        InvoiceLine(
            invoice=invoice,
            kind=kind,
            description=kind,
            quantity=1,
            unit_amount_cents=cents,
            amount_cents=cents,
            period_start=invoice.period_start,
            period_end=invoice.period_end,
        )
        for kind, cents in lines
    )
    return invoice


def payment_of(invoice: Invoice, *, at: datetime, status: str, failure_code: str = "", attempt: int = 1) -> Payment:
    return Payment.objects.create(
        invoice=invoice,
        attempt=attempt,
        idempotency_key=f"invoice:{invoice.pk}:attempt:{attempt}",
        amount_cents=invoice.total_cents,
        currency=invoice.currency,
        status=status,
        failure_code=failure_code,
        failure_message=f"Your card was declined ({failure_code})." if failure_code else "",
        created_at=at,
    )


def refund_of(payment: Payment, *, cents: int, at: datetime, status: str) -> Refund:
    return Refund.objects.create(
        payment=payment,
        idempotency_key=f"payment:{payment.pk}:refund:{next(_keys)}",
        amount_cents=cents,
        reason="analytics test",
        status=status,
        created_at=at,
    )


def money_history(catalog: dict[str, Tier]) -> dict[str, Team]:
    """Subscribers on every kind of tier and status, paid/open/void invoices across month boundaries,
    refunds in every state, failed and other payments. Call inside ``time_machine.travel(NOW)``."""
    plus, pro, free = catalog["plus"], catalog["pro"], catalog["free"]
    # A yearly tier: 19,998 / 12 = 1,666.5 cents a month, rounded half up to 1,667.
    annual = Tier.objects.create(
        slug="plus-annual", name="Plus (annual)", sort_order=25, price_cents=19_998, billing_interval="year"
    )
    # A euro tier: its money is never added to the dollars.
    pro_eu = Tier.objects.create(slug="pro-eu", name="Pro (EU)", sort_order=35, price_cents=18_000, currency="eur")
    # An archived tier without subscribers is left out of the MRR table; one with subscribers stays.
    Tier.objects.create(slug="legacy", name="Legacy", sort_order=90, price_cents=999, is_archived=True)

    teams = {
        "alice": team_of("alice@example.com", plus, "active"),  # MRR 2,000
        "bob": team_of("bob@example.com", plus, "trialing"),  # counted, MRR 0
        "carol": team_of("carol@example.com", pro, "active"),  # MRR 20,000
        "dave": team_of("dave@example.com", pro, "past_due"),  # still owes: MRR 20,000
        "erin": team_of("erin@example.com", annual, "active"),  # MRR 1,667
        "frank": team_of("frank@example.com", free, "active"),  # free: MRR 0
        "grace": team_of("grace@example.com", pro, "suspended"),  # counted, MRR 0
        "heidi": team_of("heidi@example.com", pro_eu, "active"),  # eur MRR 18,000
        "ivan": team_of("ivan@example.com", plus, "canceled"),  # not current: not counted anywhere
    }

    # Jan 2026: erin's first year, with an operator adjustment: fees 19,998 - 998 = 19,000.
    paid_invoice(teams["erin"], paid_at=_at(2026, 1, 20, 9), lines=[("fee", 19_998), ("adjustment", -998)])
    # Feb 2026, on the last second of the month: carol's renewal, fee 20,000.
    paid_invoice(teams["carol"], paid_at=_at(2026, 2, 28, 23, 59, 59), lines=[("fee", 20_000)])
    # Mar 2026, on the first instant of the month: fee 20,000 + overage 1,234 (succeeded payment,
    # later refunded 5,000 in April; a pending and a failed refund moved no money).
    march = paid_invoice(teams["carol"], paid_at=_at(2026, 3, 1), lines=[("fee", 20_000), ("overage", 1_234)])
    charged = payment_of(march, at=_at(2026, 3, 1), status="succeeded")
    refund_of(charged, cents=5_000, at=_at(2026, 4, 20, 8), status="succeeded")
    refund_of(charged, cents=100, at=_at(2026, 4, 21, 8), status="pending")
    refund_of(charged, cents=200, at=_at(2026, 4, 22, 8), status="failed")
    # Apr 2026: alice's upgrade, prorated: -1,000 credit + 9,000 charge = 8,000 of fees.
    paid_invoice(
        teams["alice"], paid_at=_at(2026, 4, 10, 15), lines=[("proration_credit", -1_000), ("proration_charge", 9_000)]
    )
    # May 2026: heidi's euro fee 18,000 and euro overage 500.
    paid_invoice(teams["heidi"], paid_at=_at(2026, 5, 1, 6), lines=[("fee", 18_000), ("overage", 500)], currency="eur")
    # Before the window (Jun 2025): excluded from the 12-month range, included in a 13-month one.
    paid_invoice(teams["carol"], paid_at=_at(2025, 6, 30, 23, 59, 59), lines=[("fee", 20_000), ("overage", 7)])
    # Not paid: earns nothing, whatever its lines.
    dunned = paid_invoice(teams["dave"], paid_at=None, lines=[("fee", 20_000)], status="open")
    paid_invoice(teams["grace"], paid_at=None, lines=[("fee", 20_000), ("overage", 50)], status="void")
    paid_invoice(teams["grace"], paid_at=None, lines=[("fee", 20_000)], status="uncollectible")

    # Failed payments: dave's renewal declined in April and again in May (20,000 each); an attempt that
    # needed 3-D Secure and a canceled one are not failures; one failure before the window.
    payment_of(dunned, at=_at(2026, 4, 2, 10), status="failed", failure_code="card_declined", attempt=1)
    payment_of(dunned, at=_at(2026, 5, 3, 10), status="failed", failure_code="expired_card", attempt=2)
    payment_of(dunned, at=_at(2026, 5, 4, 10), status="requires_action", attempt=3)
    payment_of(dunned, at=_at(2026, 5, 5, 10), status="canceled", attempt=4)
    payment_of(dunned, at=_at(2025, 6, 1, 10), status="failed", failure_code="card_declined", attempt=5)
    return teams


@pytest.fixture
def history(catalog):
    with time_machine.travel(NOW, tick=False):
        yield money_history(catalog)


def _window(months: int = 12) -> analytics.MonthWindow:
    return analytics.month_window(months=months, now=NOW)


# --- Months --------------------------------------------------------------------------------------------


def test_month_window_is_whole_utc_months_ending_with_nows():
    window = _window()
    assert window.months == WINDOW_MONTHS
    assert (window.start, window.end) == (_at(2025, 7, 1), _at(2026, 7, 1))
    one = analytics.month_window(months=1, now=_at(2026, 12, 31, 23, 59, 59))
    assert one.months == (date(2026, 12, 1),)
    assert (one.start, one.end) == (_at(2026, 12, 1), _at(2027, 1, 1))
    across_year = analytics.month_window(months=3, now=_at(2026, 2, 1))
    assert across_year.months == (date(2025, 12, 1), date(2026, 1, 1), date(2026, 2, 1))


@pytest.mark.parametrize("months", [0, -1, analytics.MAX_MONTHS + 1])
def test_month_window_refuses_ranges_out_of_bounds(months):
    with pytest.raises(ValueError, match="months must be between 1 and 36"):
        analytics.month_window(months=months, now=NOW)


@pytest.mark.parametrize(
    ("price", "interval", "monthly"),
    [
        (2_000, "month", 2_000),
        (19_998, "year", 1_667),
        (19_997, "year", 1_666),
        (12_000, "year", 1_000),
        (6, "year", 1),
    ],
)
def test_monthly_price_normalises_yearly_prices_rounding_half_up(price, interval, monthly):
    assert analytics.monthly_price_cents(price_cents=price, billing_interval=interval) == monthly


# --- MRR and subscribers -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_mrr_and_subscribers_by_tier(history, django_assert_num_queries):
    with django_assert_num_queries(1):
        report = analytics.mrr_by_tier()
    rows = {row.slug: row for row in report.tiers}
    # Catalog order; the archived tier without subscribers is left out, enterprise (none) is shown.
    expected = ["free", "assistant", "plus", "plus-annual", "pro", "pro-eu", "enterprise"]
    assert [row.slug for row in report.tiers] == expected
    figures = {
        slug: (
            r.trialing,
            r.active,
            r.past_due,
            r.suspended,
            r.subscribers,
            r.paying,
            r.monthly_price_cents,
            r.mrr_cents,
        )
        for slug, r in rows.items()
    }
    assert figures == {
        "free": (0, 1, 0, 0, 1, 0, 0, 0),
        "assistant": (0, 0, 0, 0, 0, 0, 800, 0),
        "plus": (1, 1, 0, 0, 2, 1, 2_000, 2_000),
        "plus-annual": (0, 1, 0, 0, 1, 1, 1_667, 1_667),
        "pro": (0, 1, 1, 1, 3, 2, 20_000, 40_000),
        "pro-eu": (0, 1, 0, 0, 1, 1, 18_000, 18_000),
        "enterprise": (0, 0, 0, 0, 0, 0, 500_000, 0),
    }
    assert rows["pro-eu"].currency == "eur" and rows["plus-annual"].billing_interval == "year"
    assert report.mrr_by_currency == {"usd": 2_000 + 1_667 + 40_000, "eur": 18_000}
    # Current subscriptions (ivan's canceled one is not); paying: on a priced tier, active or past due.
    assert (report.subscribers, report.paying, report.trialing) == (8, 5, 1)


@pytest.mark.django_db
def test_mrr_keeps_an_archived_tier_while_it_has_subscribers(history):
    Tier.objects.filter(slug="plus-annual").update(is_archived=True)
    assert "plus-annual" in [row.slug for row in analytics.mrr_by_tier().tiers]
    Subscription.objects.filter(tier__slug="plus-annual").update(status="canceled")
    report = analytics.mrr_by_tier()
    assert "plus-annual" not in [row.slug for row in report.tiers]
    assert report.mrr_by_currency == {"usd": 42_000, "eur": 18_000}


@pytest.mark.django_db
def test_mrr_of_an_empty_catalog_is_zero(catalog):
    report = analytics.mrr_by_tier()
    # The seed's paid tiers are in dollars: the currency is shown, at zero.
    assert report.mrr_by_currency == {"usd": 0}
    assert (report.subscribers, report.paying, report.trialing) == (0, 0, 0)
    assert [row.slug for row in report.tiers] == ["free", "assistant", "plus", "pro", "enterprise"]


# --- Revenue by month ----------------------------------------------------------------------------------


def _revenue_table(report) -> dict[str, dict[date, tuple[int, int, int, int]]]:
    return {
        currency: {r.month: (r.subscription_fees_cents, r.overage_cents, r.refunds_cents, r.net_cents) for r in rows}
        for currency, rows in report.items()
    }


@pytest.mark.django_db
def test_revenue_by_month_splits_fees_overage_and_refunds_per_currency(history, django_assert_num_queries):
    with django_assert_num_queries(2):
        report = analytics.revenue_by_month(window=_window())
    assert list(report) == ["eur", "usd"]
    assert [row.month for row in report["usd"]] == list(WINDOW_MONTHS)
    zero = (0, 0, 0, 0)
    expected_usd = dict.fromkeys(WINDOW_MONTHS, zero) | {
        date(2026, 1, 1): (19_000, 0, 0, 19_000),
        date(2026, 2, 1): (20_000, 0, 0, 20_000),
        date(2026, 3, 1): (20_000, 1_234, 0, 21_234),
        date(2026, 4, 1): (8_000, 0, -5_000, 3_000),
    }
    expected_eur = dict.fromkeys(WINDOW_MONTHS, zero) | {date(2026, 5, 1): (18_000, 500, 0, 18_500)}
    assert _revenue_table(report) == {"usd": expected_usd, "eur": expected_eur}


@pytest.mark.django_db
def test_revenue_window_edges_are_whole_utc_months(history):
    # 13 months reach back to June 2025: the invoice paid on its last second is in it.
    june = analytics.revenue_by_month(window=_window(13))["usd"][0]
    assert (june.month, june.subscription_fees_cents, june.overage_cents) == (date(2025, 6, 1), 20_000, 7)
    # 4 months (Mar..Jun 2026): the invoice paid at 2026-03-01T00:00Z is in, the one a second earlier out.
    short = _revenue_table(analytics.revenue_by_month(window=_window(4)))
    assert short["usd"][date(2026, 3, 1)] == (20_000, 1_234, 0, 21_234)
    assert date(2026, 2, 1) not in short["usd"]
    # 1 month (June 2026): nothing was paid or refunded, so no currency has a row.
    assert analytics.revenue_by_month(window=_window(1)) == {}


# --- Failed payments -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_failed_payments_by_month_and_latest(history, django_assert_num_queries):
    with django_assert_num_queries(2):
        report = analytics.failed_payments(window=_window())
    assert list(report.by_month) == ["usd"]
    monthly = {row.month: (row.count, row.amount_cents) for row in report.by_month["usd"]}
    assert monthly == dict.fromkeys(WINDOW_MONTHS, (0, 0)) | {
        date(2026, 4, 1): (1, 20_000),
        date(2026, 5, 1): (1, 20_000),
    }
    latest = [(p.created_at, p.team_name, p.attempt, p.failure_code, p.amount_cents) for p in report.latest]
    assert latest == [
        (_at(2026, 5, 3, 10), "dave@example.com's team", 2, "expired_card", 20_000),
        (_at(2026, 4, 2, 10), "dave@example.com's team", 1, "card_declined", 20_000),
    ]
    assert report.latest[0].team_id == history["dave"].pk
    assert report.latest[0].invoice_number.startswith("TL-T")
    assert report.latest[0].failure_message == "Your card was declined (expired_card)."


@pytest.mark.django_db
def test_failed_payments_latest_is_capped_newest_first(history):
    dunned = Invoice.objects.get(team=history["dave"], status="open")
    for day in range(1, 26):
        payment_of(dunned, at=_at(2026, 6, day), status="failed", failure_code="card_declined", attempt=10 + day)
    report = analytics.failed_payments(window=_window())
    assert len(report.latest) == analytics.FAILED_PAYMENTS_LATEST == 20
    assert report.latest[0].created_at == _at(2026, 6, 25) and report.latest[-1].created_at == _at(2026, 6, 6)
    june = report.by_month["usd"][-1]
    assert (june.month, june.count, june.amount_cents) == (date(2026, 6, 1), 25, 25 * 20_000)
