"""Operator analytics on money: MRR and subscribers by tier, revenue by month, failed payments.

Read-only selectors for the admin's analytics page (partners/admin_analytics.py). Each figure is one
set-based aggregate (GROUP BY tier / month with SUM and FILTER), so the cost does not grow with the
number of customers in Python; only the aggregated rows (a handful of tiers, at most a few dozen
months) are shaped here.

Conventions, the same as the billing engine's (billing/checkout.py, billing/close.py):
- Money is integer cents with its currency; every money figure is split by currency, never summed
  across currencies (the seed catalog is all usd, an operator may add others).
- Months are UTC calendar months, named by their first day (a ``date``). A range of N months ends
  with the month that contains ``now`` and is half-open: [first day of the first month, first day of
  the month after ``now``'s).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncMonth
from django.utils import timezone

from billing.models import Invoice, InvoiceLine, Payment, Refund
from core.periods import add_months, month_first
from tiers.models import Subscription, Tier

# The longest range the page accepts: three years of months keeps every chart legible.
MAX_MONTHS = 36
DEFAULT_MONTHS = 12
FAILED_PAYMENTS_LATEST = 20

# Statuses that pay: a past-due subscription still owes its fee (dunning is collecting it), so it stays
# in MRR until dunning gives up and moves it to the free tier. Trialing pays nothing yet (its own
# count is shown); suspended and canceled pay nothing.
PAYING_STATUSES = (Subscription.Status.ACTIVE, Subscription.Status.PAST_DUE)
CURRENT_STATUSES = (
    Subscription.Status.TRIALING,
    Subscription.Status.ACTIVE,
    Subscription.Status.PAST_DUE,
    Subscription.Status.SUSPENDED,
)
# Invoice lines that are the subscription fee: the period fee, both halves of a proration and operator
# adjustments (all price the subscription itself, not its usage). Overage is the usage part.
FEE_LINE_KINDS = (
    InvoiceLine.Kind.FEE,
    InvoiceLine.Kind.PRORATION_CREDIT,
    InvoiceLine.Kind.PRORATION_CHARGE,
    InvoiceLine.Kind.ADJUSTMENT,
)
REFUND_SUCCEEDED = "succeeded"


# --- Months -----------------------------------------------------------------------------------------


def month_start(month: date) -> datetime:
    """Midnight UTC on the first day of ``month``."""
    return datetime(month.year, month.month, 1, tzinfo=UTC)


@dataclass(frozen=True)
class MonthWindow:
    """``months`` (first days, oldest first) and the half-open instant range [start, end) they cover."""

    months: tuple[date, ...]
    start: datetime
    end: datetime


def month_window(*, months: int = DEFAULT_MONTHS, now: datetime | None = None) -> MonthWindow:
    """The last ``months`` UTC calendar months up to and including the one containing ``now``."""
    if not 1 <= months <= MAX_MONTHS:
        raise ValueError(f"months must be between 1 and {MAX_MONTHS}, not {months}")
    now = (now or timezone.now()).astimezone(UTC)
    last = date(now.year, now.month, 1)
    first = add_months(last, -(months - 1))
    names = tuple(add_months(first, i) for i in range(months))
    return MonthWindow(months=names, start=month_start(first), end=month_start(add_months(last, 1)))


# --- MRR and subscribers by tier ----------------------------------------------------------------------


def monthly_price_cents(*, price_cents: int, billing_interval: str) -> int:
    """A tier's price normalised to one month: a yearly price / 12, rounded to the cent, half up
    (integer arithmetic: no float ever touches money)."""
    if billing_interval == Tier.Interval.YEAR:
        return (price_cents * 2 + 12) // 24
    return price_cents


@dataclass(frozen=True)
class TierMrr:
    """One tier's current subscribers by status and its MRR (``paying`` x ``monthly_price_cents``)."""

    tier_id: int
    slug: str
    name: str
    currency: str
    billing_interval: str
    price_cents: int
    monthly_price_cents: int
    trialing: int
    active: int
    past_due: int
    suspended: int
    mrr_cents: int

    @property
    def paying(self) -> int:
        """Subscriptions that pay a fee: active or past due, on a priced tier."""
        return self.active + self.past_due if self.price_cents else 0

    @property
    def subscribers(self) -> int:
        """Every current (not canceled) subscription, whatever its status."""
        return self.trialing + self.active + self.past_due + self.suspended


@dataclass(frozen=True)
class MrrReport:
    tiers: list[TierMrr]
    # currency -> MRR in cents, and the counts over all tiers.
    mrr_by_currency: dict[str, int] = field(default_factory=dict)
    subscribers: int = 0
    paying: int = 0
    trialing: int = 0


def mrr_by_tier() -> MrrReport:
    """Monthly recurring revenue and current subscribers per tier, as of now.

    MRR: over current subscriptions that pay (status active or past_due), the tier's list price
    normalised to a month (``monthly_price_cents``), per currency. Trialing subscriptions count 0 (their
    number is shown); suspended ones pay nothing. It is a snapshot: subscriptions keep no status
    history, so there is no MRR "as of" a past date. The list price is the tier's current one; a price
    change reaches a subscriber at its next period (issued invoices are never rewritten), so for that
    one period this is the price the subscriber will pay next, not the one last invoiced.

    Every tier with current subscribers is listed, and every tier that is not archived (with zeros),
    in catalog order. One query.
    """

    def count(status: str) -> Count:
        return Count("subscriptions", filter=Q(subscriptions__status=status))

    tiers = Tier.objects.annotate(
        n_trialing=count(Subscription.Status.TRIALING),
        n_active=count(Subscription.Status.ACTIVE),
        n_past_due=count(Subscription.Status.PAST_DUE),
        n_suspended=count(Subscription.Status.SUSPENDED),
    ).order_by("sort_order", "price_cents", "slug")
    rows: list[TierMrr] = []
    mrr: dict[str, int] = {}
    for tier in tiers:
        current = tier.n_trialing + tier.n_active + tier.n_past_due + tier.n_suspended
        if tier.is_archived and not current:
            continue
        monthly = monthly_price_cents(price_cents=tier.price_cents, billing_interval=tier.billing_interval)
        tier_mrr = monthly * (tier.n_active + tier.n_past_due)
        rows.append(
            TierMrr(
                tier_id=tier.pk,
                slug=tier.slug,
                name=tier.name,
                currency=tier.currency,
                billing_interval=tier.billing_interval,
                price_cents=tier.price_cents,
                monthly_price_cents=monthly,
                trialing=tier.n_trialing,
                active=tier.n_active,
                past_due=tier.n_past_due,
                suspended=tier.n_suspended,
                mrr_cents=tier_mrr,
            )
        )
        if tier.is_paid:
            mrr[tier.currency] = mrr.get(tier.currency, 0) + tier_mrr
    return MrrReport(
        tiers=rows,
        mrr_by_currency=mrr,
        subscribers=sum(r.subscribers for r in rows),
        paying=sum(r.paying for r in rows),
        trialing=sum(r.trialing for r in rows),
    )


# --- Revenue by month ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonthRevenue:
    """Direct revenue of one month in one currency, in cents. ``refunds_cents`` is negative (or 0)."""

    month: date
    currency: str
    subscription_fees_cents: int = 0
    overage_cents: int = 0
    refunds_cents: int = 0

    @property
    def net_cents(self) -> int:
        return self.subscription_fees_cents + self.overage_cents + self.refunds_cents


def revenue_by_month(*, window: MonthWindow) -> dict[str, list[MonthRevenue]]:
    """Revenue per UTC calendar month of ``window``, per currency (currency -> one row per month, oldest
    first; every month present, zeros included). Cash basis, like the money itself moved:

    - subscription fees: the fee, proration (credit and charge) and adjustment lines of paid invoices,
      in the month the invoice was paid (``paid_at``);
    - overage: the overage lines of paid invoices, in the month the invoice was paid;
    - refunds: succeeded refunds, negative, in the month they were made (``created_at``), in the
      refunded payment's currency. Pending and failed refunds moved no money.

    Open, void and uncollectible invoices earned nothing. Two queries.
    """
    lines = (
        InvoiceLine.objects.filter(
            invoice__status=Invoice.Status.PAID,
            invoice__paid_at__gte=window.start,
            invoice__paid_at__lt=window.end,
        )
        .annotate(month=TruncMonth("invoice__paid_at", tzinfo=UTC))
        .values("month", "invoice__currency")
        .annotate(
            fees=Sum("amount_cents", filter=Q(kind__in=FEE_LINE_KINDS)),
            overage=Sum("amount_cents", filter=Q(kind=InvoiceLine.Kind.OVERAGE)),
        )
        .order_by()
    )
    refunds = (
        Refund.objects.filter(status=REFUND_SUCCEEDED, created_at__gte=window.start, created_at__lt=window.end)
        .annotate(month=TruncMonth("created_at", tzinfo=UTC))
        .values("month", "payment__currency")
        .annotate(total=Sum("amount_cents"))
        .order_by()
    )
    cells: dict[tuple[str, date], dict[str, int]] = {}
    for row in lines:
        cell = cells.setdefault((row["invoice__currency"], month_first(row["month"])), {})
        cell["subscription_fees_cents"] = int(row["fees"] or 0)
        cell["overage_cents"] = int(row["overage"] or 0)
    for row in refunds:
        cell = cells.setdefault((row["payment__currency"], month_first(row["month"])), {})
        cell["refunds_cents"] = -int(row["total"] or 0)
    currencies = sorted({currency for currency, _ in cells})
    return {
        currency: [MonthRevenue(month=m, currency=currency, **cells.get((currency, m), {})) for m in window.months]
        for currency in currencies
    }


# --- Failed payments -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonthFailures:
    month: date
    currency: str
    count: int = 0
    amount_cents: int = 0


@dataclass(frozen=True)
class FailedPayment:
    payment_id: int
    created_at: datetime
    team_id: int
    team_name: str
    invoice_number: str
    attempt: int
    amount_cents: int
    currency: str
    failure_code: str
    failure_message: str


@dataclass(frozen=True)
class FailedPaymentsReport:
    # currency -> one row per month of the window, oldest first.
    by_month: dict[str, list[MonthFailures]]
    latest: list[FailedPayment]


def failed_payments(*, window: MonthWindow, latest: int = FAILED_PAYMENTS_LATEST) -> FailedPaymentsReport:
    """Charge attempts that failed (Payment status ``failed``: declined, or no card to charge), counted
    and summed per month of the attempt (``created_at``) and currency, plus the ``latest`` failures of
    the window, newest first, with their team and failure code. Attempts that need 3-D Secure or were
    canceled are not failures of the card and are left out. Two queries."""
    failed = Payment.objects.filter(
        status=Payment.Status.FAILED, created_at__gte=window.start, created_at__lt=window.end
    )
    monthly = (
        failed.annotate(month=TruncMonth("created_at", tzinfo=UTC))
        .values("month", "currency")
        .annotate(n=Count("id"), total=Sum("amount_cents"))
        .order_by()
    )
    cells = {(row["currency"], month_first(row["month"])): (row["n"], int(row["total"] or 0)) for row in monthly}
    by_month: dict[str, list[MonthFailures]] = {}
    for currency in sorted({currency for currency, _ in cells}):
        series = []
        for month in window.months:
            count, amount = cells.get((currency, month), (0, 0))
            series.append(MonthFailures(month=month, currency=currency, count=count, amount_cents=amount))
        by_month[currency] = series
    rows = failed.order_by("-created_at", "-id").values(
        "id",
        "created_at",
        "attempt",
        "amount_cents",
        "currency",
        "failure_code",
        "failure_message",
        "invoice__number",
        "invoice__team_id",
        "invoice__team__name",
    )[:latest]
    return FailedPaymentsReport(
        by_month=by_month,
        latest=[
            FailedPayment(
                payment_id=row["id"],
                created_at=row["created_at"],
                team_id=row["invoice__team_id"],
                team_name=row["invoice__team__name"],
                invoice_number=row["invoice__number"] or "",
                attempt=row["attempt"],
                amount_cents=row["amount_cents"],
                currency=row["currency"],
                failure_code=row["failure_code"],
                failure_message=row["failure_message"],
            )
            for row in rows
        ],
    )
