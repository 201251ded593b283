"""Billing reads: the team's invoices, and what the /billing/ page shows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from django.db.models import QuerySet
from django.utils import timezone

from billing.models import BillingCustomer, Invoice
from tiers.models import Subscription, Tier
from tiers.pricing import overage_line_values
from tiers.selectors import subscription_current
from usage.selectors import tokens_used

if TYPE_CHECKING:
    from accounts.models import Team


def invoice_list_for_team(*, team: Team) -> QuerySet[Invoice]:
    """The team's issued invoices, newest first. Scoped to the team, so another team's invoice number
    is simply not found; drafts have no number yet and are left out."""
    return Invoice.objects.filter(team=team, number__isnull=False).order_by("-issued_at", "-id")


# --- The billing page ------------------------------------------------------------------------------------

OVERVIEW_INVOICES = 50


@dataclass(frozen=True)
class BillingOverview:
    """What /billing/ shows."""

    subscription: Subscription | None
    next_charge_at: datetime | None
    next_charge_cents: int | None
    currency: str
    pending_change: str  # human readable, "" if none: "Moves to Free on Mar 1", "Cancels on Mar 1"
    card_brand: str
    card_last4: str
    invoices: list[Invoice]


def _day(value: datetime, now: datetime) -> str:
    """ "Mar 1", with the year when it is not the current one ("Mar 1, 2027")."""
    text = f"{value:%b} {value.day}"
    return text if value.year == now.year else f"{text}, {value.year}"


def billing_overview(*, team: Team, now: datetime | None = None) -> BillingOverview:
    """For the /billing/ page: subscription, next charge date and amount (fee + estimated overage so
    far), pending change, card on file, invoices.

    Next charge: while dunning, the open invoice's next retry; otherwise the period end, for the fee of
    the tier that applies from then (the scheduled one, free after a cancel) plus the overage of this
    period so far at today's usage. None when nothing will be charged (free, or leaving a tier that
    bills no overage)."""
    now = now or timezone.now()
    subscription = subscription_current(team=team)
    customer = BillingCustomer.objects.filter(team=team).first()
    invoices = list(Invoice.objects.filter(team=team).exclude(status=Invoice.Status.DRAFT)[:OVERVIEW_INVOICES])
    next_at: datetime | None = None
    next_cents: int | None = None
    currency = subscription.tier.currency if subscription else "usd"
    pending_change = ""
    if subscription is not None:
        tier = subscription.tier
        end = subscription.current_period_end
        if subscription.cancel_at_period_end:
            pending_change = f"Cancels on {_day(end, now)}"
            upcoming: Tier | None = None
        elif subscription.pending_tier is not None:
            pending_change = f"Moves to {subscription.pending_tier.name} on {_day(end, now)}"
            upcoming = subscription.pending_tier
        else:
            upcoming = tier
        dunning = (
            Invoice.objects.filter(subscription=subscription, status=Invoice.Status.OPEN, next_attempt_at__isnull=False)
            .order_by("next_attempt_at")
            .first()
        )
        if dunning is not None:
            next_at, next_cents, currency = dunning.next_attempt_at, dunning.total_cents, dunning.currency
        else:
            cents = upcoming.price_cents if upcoming is not None and upcoming.is_paid else 0
            if tier.bills_overage and subscription.status != Subscription.Status.TRIALING:
                used = tokens_used(team_id=team.pk, start=subscription.current_period_start, end=now)
                overage = overage_line_values(tier=tier, tokens_used=used)
                cents += overage[1] if overage else 0
            if cents > 0:
                next_at, next_cents = end, cents
                if upcoming is not None and upcoming.is_paid:
                    currency = upcoming.currency
    return BillingOverview(
        subscription=subscription,
        next_charge_at=next_at,
        next_charge_cents=next_cents,
        currency=currency,
        pending_change=pending_change,
        card_brand=customer.card_brand_name if customer else "",
        card_last4=customer.card_last4 if customer else "",
        invoices=invoices,
    )
