"""Operator analytics across channels: partner revenue share and licence fees by month, revenue by
channel (direct subscriptions, direct overage, partner share, licence fees), and the whole operator
dashboard in one call. It lives in partners, the highest of the apps whose figures it combines
(billing's money, usage's customers and refusals, partners' statements and licences).

Months, ranges and money follow billing/analytics.py: UTC calendar months named by their first day,
half-open instant ranges, integer cents per currency.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from django.db.models import Sum
from django.db.models.functions import Coalesce, TruncMonth
from django.utils import timezone

from billing import analytics as money_analytics
from billing.analytics import MonthWindow, month_window
from core.periods import month_first
from partners.models import LicenseAgreement, PartnerStatementLine
from usage.analytics import RefusalsReport, TopCustomer, quota_refusals_by_tier, top_customers_by_tokens

# --- Partner revenue share and licence fees -----------------------------------------------------------


def partner_share_by_month(*, window: MonthWindow) -> dict[tuple[str, date], int]:
    """(currency, month) -> the revenue share partners owe, in cents: the sum of ``share_cents`` of every
    line of the statements for that month. A late-event adjustment line counts in the month of the
    statement it appears on (statements are immutable; the adjustment is when it was billed), not in
    its ``usage_month``. One query."""
    rows = (
        PartnerStatementLine.objects.filter(
            statement__month__gte=window.months[0], statement__month__lte=window.months[-1]
        )
        .values("statement__month", "currency")
        .annotate(total=Sum("share_cents"))
        .order_by()
    )
    return {(row["currency"], month_first(row["statement__month"])): int(row["total"] or 0) for row in rows}


def license_fees_by_month(*, window: MonthWindow) -> dict[tuple[str, date], int]:
    """(currency, month) -> licence fees, in cents: every licence agreement whose status is granted
    contributes its ``monthly_fee_cents`` to each calendar month from the month it was granted
    (``decided_at``; ``created_at`` should a granted row lack it) on. Required, requested and refused
    agreements earn nothing.

    Agreements keep no status history: a licence granted and later refused is counted in no month.
    One query grouping the granted agreements by the month they were granted; the running total over
    the window's months is summed here (one step per month, not per agreement).
    """
    granted = (
        LicenseAgreement.objects.filter(status=LicenseAgreement.Status.GRANTED)
        .annotate(granted_at=Coalesce("decided_at", "created_at"))
        .filter(granted_at__lt=window.end)
        .annotate(month=TruncMonth("granted_at", tzinfo=UTC))
        .values("month", "currency")
        .annotate(total=Sum("monthly_fee_cents"))
        .order_by()
    )
    starting: dict[str, dict[date, int]] = {}
    for row in granted:
        month = max(month_first(row["month"]), window.months[0])  # granted before the window: from its start
        per_month = starting.setdefault(row["currency"], {})
        per_month[month] = per_month.get(month, 0) + int(row["total"] or 0)
    fees: dict[tuple[str, date], int] = {}
    for currency, per_month in starting.items():
        running = 0
        for month in window.months:
            running += per_month.get(month, 0)
            fees[(currency, month)] = running
    return fees


# --- Revenue by channel --------------------------------------------------------------------------------

CHANNELS = (
    ("direct_subscriptions", "Direct subscriptions"),
    ("direct_overage", "Direct overage"),
    ("partner_share", "Partner revenue share"),
    ("license_fees", "Licence fees"),
)


@dataclass(frozen=True)
class MonthChannels:
    """One month's revenue by channel in one currency, in cents (gross: refunds are in the monthly
    revenue table, not attributed to a channel)."""

    month: date
    currency: str
    direct_subscriptions: int = 0
    direct_overage: int = 0
    partner_share: int = 0
    license_fees: int = 0

    @property
    def total(self) -> int:
        return self.direct_subscriptions + self.direct_overage + self.partner_share + self.license_fees


def revenue_by_channel(
    *, window: MonthWindow, direct: dict[str, list[money_analytics.MonthRevenue]] | None = None
) -> dict[str, list[MonthChannels]]:
    """currency -> one row per month of ``window`` (oldest first): direct subscriptions and direct
    overage as in ``billing.analytics.revenue_by_month`` (paid invoices by the month they were paid),
    partner revenue share (``partner_share_by_month``) and licence fees (``license_fees_by_month``).

    ``direct`` is the already computed ``revenue_by_month(window=window)``, to save its two queries
    when the caller has it."""
    if direct is None:
        direct = money_analytics.revenue_by_month(window=window)
    partner = partner_share_by_month(window=window)
    licences = license_fees_by_month(window=window)
    direct_cells = {(row.currency, row.month): row for rows in direct.values() for row in rows}
    currencies = sorted({c for c, _ in direct_cells} | {c for c, _ in partner} | {c for c, _ in licences})
    report: dict[str, list[MonthChannels]] = {}
    for currency in currencies:
        series = []
        for month in window.months:
            row = direct_cells.get((currency, month))
            series.append(
                MonthChannels(
                    month=month,
                    currency=currency,
                    direct_subscriptions=row.subscription_fees_cents if row else 0,
                    direct_overage=row.overage_cents if row else 0,
                    partner_share=partner.get((currency, month), 0),
                    license_fees=licences.get((currency, month), 0),
                )
            )
        report[currency] = series
    return report


# --- The dashboard -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OperatorDashboard:
    window: MonthWindow
    now: datetime
    mrr: money_analytics.MrrReport
    revenue: dict[str, list[money_analytics.MonthRevenue]]
    channels: dict[str, list[MonthChannels]]
    top_customers: list[TopCustomer]
    refusals: RefusalsReport
    failed_payments: money_analytics.FailedPaymentsReport


def operator_dashboard(
    *, months: int = money_analytics.DEFAULT_MONTHS, now: datetime | None = None
) -> OperatorDashboard:
    """Every figure of the admin's analytics page for the last ``months`` UTC calendar months up to
    ``now``'s (top customers and refusals over the same range). A fixed number of queries (ten),
    whatever the number of customers."""
    now = now or timezone.now()
    window = month_window(months=months, now=now)
    revenue = money_analytics.revenue_by_month(window=window)
    return OperatorDashboard(
        window=window,
        now=now,
        mrr=money_analytics.mrr_by_tier(),
        revenue=revenue,
        channels=revenue_by_channel(window=window, direct=revenue),
        top_customers=top_customers_by_tokens(start=window.start, end=window.end),
        refusals=quota_refusals_by_tier(start=window.start, end=window.end),
        failed_payments=money_analytics.failed_payments(window=window),
    )
