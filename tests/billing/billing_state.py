"""Billing state built directly with the models, for tests of the read-only billing views (invoice page,
lists, admin) that must not depend on the billing engine or Stripe."""

from __future__ import annotations

from datetime import UTC, datetime

from accounts.selectors import team_for_user
from billing.models import BillingCustomer, Invoice, InvoiceLine, Payment
from tiers.models import Subscription, Tier
from tiers.services import user_create

PASSWORD = "correct-horse-battery-9"
JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)


def subscriber(email: str, tier_slug: str = "free"):
    """A verified user with a personal team on ``tier_slug``; returns (user, team)."""
    user = user_create(email=email, password=PASSWORD, tier_slug=tier_slug)
    return user, team_for_user(user=user)


def paid_tier_without_trial(*, slug: str = "team", price_cents: int = 5_000, sort_order: int = 25) -> Tier:
    """A public paid tier that charges at once (the seed's Plus and Pro start with a trial)."""
    tier = Tier(
        slug=slug,
        name=slug.title(),
        description=f"{slug.title()}: paid from day one.",
        sort_order=sort_order,
        is_paid=True,
        price_cents=price_cents,
        currency="usd",
        trial_days=0,
        requests_per_minute=100,
        monthly_tokens=10_000_000,
    )
    tier.full_clean()
    tier.save()
    return tier


def card_on_file(team, *, brand: str = "visa", last4: str = "4242") -> BillingCustomer:
    return BillingCustomer.objects.create(
        team=team,
        stripe_customer_id=f"cus_test_{team.pk}",
        default_payment_method_id=f"pm_test_{team.pk}",
        card_brand=brand,
        card_last4=last4,
    )


def invoice_paid(team, *, number: str, tier: Tier, status: str = "paid", issued_at: datetime = JAN_1) -> Invoice:
    """An issued invoice for one period of ``tier`` with a fee line and, if paid, one succeeded payment."""
    subscription = Subscription.objects.filter(team=team).exclude(status="canceled").first()
    invoice = Invoice.objects.create(
        number=number,
        billing_key=f"test:{number}",
        team=team,
        subscription=subscription,
        kind=Invoice.Kind.INITIAL,
        status=status,
        currency=tier.currency,
        total_cents=tier.price_cents,
        period_start=JAN_1,
        period_end=FEB_1,
        issued_at=issued_at,
        paid_at=issued_at if status == "paid" else None,
    )
    InvoiceLine.objects.create(
        invoice=invoice,
        kind=InvoiceLine.Kind.FEE,
        description=f"{tier.name} tier, monthly fee",
        tier=tier,
        quantity=1,
        unit_amount_cents=tier.price_cents,
        amount_cents=tier.price_cents,
        period_start=JAN_1,
        period_end=FEB_1,
    )
    if status == "paid":
        Payment.objects.create(
            invoice=invoice,
            attempt=1,
            idempotency_key=f"invoice:{invoice.pk}:attempt:1",
            stripe_payment_intent_id=f"pi_test_{number}",
            amount_cents=tier.price_cents,
            currency=tier.currency,
            status=Payment.Status.SUCCEEDED,
            created_at=issued_at,
        )
    return invoice


def invoice_prorated(team, *, number: str, old: Tier, new: Tier) -> Invoice:
    """An upgrade's invoice: a credit for the unused half of ``old`` and a charge for half of ``new``."""
    subscription = Subscription.objects.filter(team=team).exclude(status="canceled").first()
    mid = datetime(2026, 1, 16, 12, tzinfo=UTC)
    credit, charge = -old.price_cents // 2, new.price_cents // 2
    invoice = Invoice.objects.create(
        number=number,
        billing_key=f"test:{number}",
        team=team,
        subscription=subscription,
        kind=Invoice.Kind.PRORATION,
        status=Invoice.Status.OPEN,
        currency="usd",
        total_cents=credit + charge,
        period_start=mid,
        period_end=FEB_1,
        issued_at=mid,
    )
    InvoiceLine.objects.create(
        invoice=invoice,
        kind=InvoiceLine.Kind.PRORATION_CREDIT,
        description=f"Unused time on {old.name}",
        tier=old,
        unit_amount_cents=credit,
        amount_cents=credit,
        period_start=mid,
        period_end=FEB_1,
    )
    InvoiceLine.objects.create(
        invoice=invoice,
        kind=InvoiceLine.Kind.PRORATION_CHARGE,
        description=f"Remaining time on {new.name}",
        tier=new,
        unit_amount_cents=charge,
        amount_cents=charge,
        period_start=mid,
        period_end=FEB_1,
    )
    return invoice
