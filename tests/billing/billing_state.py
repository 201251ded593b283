"""Billing state built with the factories, for tests of the read-only billing views (invoice page,
lists, admin) that must not depend on the billing engine or Stripe."""

from __future__ import annotations

from datetime import UTC, datetime

from accounts.selectors import team_for_user
from billing.models import BillingCustomer, Invoice, InvoiceLine
from billing.proration import proration_compute
from core.periods import period_bounds
from tests.factories import (
    BillingCustomerFactory,
    InvoiceFactory,
    InvoiceLineFactory,
    SubscriberFactory,
    TierFactory,
)
from tiers.models import Tier
from tiers.selectors import subscription_current

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)


def subscriber(email: str, tier_slug: str = "free"):
    """A verified user with a personal team on ``tier_slug``; returns (user, team)."""
    user = SubscriberFactory(email=email, tier_slug=tier_slug)
    return user, team_for_user(user=user)


def paid_tier_without_trial(*, slug: str = "team", price_cents: int = 5_000, sort_order: int = 25) -> Tier:
    """A public paid tier that charges at once (the seed's Plus and Pro start with a trial)."""
    return TierFactory(
        slug=slug,
        description=f"{slug.title()}: paid from day one.",
        sort_order=sort_order,
        price_cents=price_cents,
        requests_per_minute=100,
        monthly_tokens=10_000_000,
    )


def card_on_file(team, *, brand: str = "visa", last4: str = "4242") -> BillingCustomer:
    return BillingCustomerFactory(team=team, card_brand=brand, card_last4=last4)


def invoice_paid(team, *, number: str, tier: Tier, status: str = "paid", issued_at: datetime = JAN_1) -> Invoice:
    """A first-period invoice of ``tier`` issued at ``issued_at`` (where checkout starts the period) with
    its fee line and, if paid, one succeeded payment."""
    start, end = period_bounds(issued_at, tier.billing_interval, 0)
    paid = status == Invoice.Status.PAID
    return InvoiceFactory(
        subscription=subscription_current(team=team),
        tier=tier,
        number=number,
        kind=Invoice.Kind.INITIAL,
        status=status,
        period_start=start,
        period_end=end,
        issued_at=issued_at,
        paid=paid,
        **({"payment__stripe_payment_intent_id": f"pi_test_{number}"} if paid else {}),
    )


def invoice_prorated(team, *, number: str, old: Tier, new: Tier) -> Invoice:
    """An upgrade's invoice half-way through January: a credit for the unused half of ``old`` and a
    charge for half of ``new``, as ``billing.proration`` computes them."""
    mid = datetime(2026, 1, 16, 12, tzinfo=UTC)
    proration = proration_compute(
        old_price_cents=old.price_cents, new_price_cents=new.price_cents, period_start=JAN_1, period_end=FEB_1, at=mid
    )
    invoice = InvoiceFactory(
        subscription=subscription_current(team=team),
        tier=new,
        number=number,
        kind=Invoice.Kind.PRORATION,
        period_start=mid,
        period_end=FEB_1,
        issued_at=mid,
        fee=None,
    )
    for kind, description, tier, cents in [
        (InvoiceLine.Kind.PRORATION_CREDIT, f"Unused time on {old.name}", old, proration.credit_cents),
        (InvoiceLine.Kind.PRORATION_CHARGE, f"Remaining time on {new.name}", new, proration.charge_cents),
    ]:
        InvoiceLineFactory(invoice=invoice, kind=kind, description=description, tier=tier, unit_amount_cents=cents)
    return invoice
