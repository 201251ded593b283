"""The team's Stripe customer and its card on file."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction

from accounts.emails import team_owner_emails
from accounts.models import AuditEntry
from billing import stripe_gateway as gateway
from billing.models import BillingCustomer, Invoice
from billing.services import PaymentMethodRequired, audit, billing_now, billing_role_check

if TYPE_CHECKING:
    from accounts.models import Team, User


def billing_customer_ensure(*, team: Team, now: datetime | None = None) -> BillingCustomer:
    """The team's Stripe customer, created on first use (idempotent)."""
    existing = BillingCustomer.objects.filter(team=team).first()
    if existing is not None:
        return existing
    owners = team_owner_emails(team_id=team.pk)
    # Created outside any transaction: no database lock is held across a network call. Two first uses
    # at once (a double click) may both create a Stripe customer; the unique team row keeps one, the
    # other stays an empty customer in Stripe, which costs nothing.
    customer_id = gateway.customer_create(
        email=owners[0] if owners else "", team_id=team.pk, idempotency_key=f"team:{team.pk}:customer"
    )
    try:
        with transaction.atomic():
            return BillingCustomer.objects.create(team=team, stripe_customer_id=customer_id)
    except IntegrityError:
        return BillingCustomer.objects.get(team=team)


def setup_intent_start(*, team: Team, actor: User | None = None) -> gateway.SetupIntentStarted:
    """A SetupIntent for the team's customer (created on first use), for the page's Stripe.js to
    confirm the card a person types (the client secret goes to that page only)."""
    billing_role_check(team=team, actor=actor)
    customer = billing_customer_ensure(team=team)
    return gateway.setup_intent_create(customer_id=customer.stripe_customer_id)


def payment_method_update(
    *,
    team: Team,
    payment_method: str,
    setup_intent: str | None = None,
    actor: User | None = None,
    now: datetime | None = None,
) -> BillingCustomer:
    """Make ``payment_method`` the team's default card.

    With ``setup_intent`` (the pages: a card typed into Stripe.js and confirmed there, 3-D Secure
    included), Stripe is asked first whether that SetupIntent belongs to the team's customer, succeeded
    and saved this payment method; if not, stripe_gateway.SetupIntentInvalid and nothing changes.
    Without it (the account API, the simulator), ``payment_method`` is attached as given (a Stripe test
    PM such as "pm_card_visa"). A decline raises stripe_gateway.PaymentDeclined and changes nothing.

    An open renewal invoice waiting for its next dunning retry is brought forward to ``now``: whoever
    fixes their card should not wait days for the retry (Stripe retries on a card update as well)."""
    now = billing_now(now)
    billing_role_check(team=team, actor=actor)
    customer = billing_customer_ensure(team=team, now=now)
    if setup_intent is not None:
        card = gateway.setup_intent_card_use(
            setup_intent_id=setup_intent, payment_method_id=payment_method, customer_id=customer.stripe_customer_id
        )
    else:
        card = gateway.payment_method_attach(
            customer_id=customer.stripe_customer_id, payment_method=payment_method, make_default=True
        )
    with transaction.atomic():
        customer = BillingCustomer.objects.select_for_update().get(pk=customer.pk)
        customer.default_payment_method_id = card.payment_method_id
        customer.card_brand = card.brand[:20]
        customer.card_last4 = card.last4[:4]
        customer.save(update_fields=["default_payment_method_id", "card_brand", "card_last4", "updated_at"])
        Invoice.objects.filter(
            team=team, kind=Invoice.Kind.RENEWAL, status=Invoice.Status.OPEN, next_attempt_at__gt=now
        ).update(next_attempt_at=now)
        audit(
            team_id=team.pk,
            actor=actor,
            action=AuditEntry.Action.PAYMENT_METHOD_UPDATED,
            description=f"Card on file is now {customer.card_brand_name} ending in {card.last4}.",
            now=now,
            payment_method=card.payment_method_id,
        )
    return customer


def card_on_file(
    *, team: Team, payment_method: str | None, actor: User | None, now: datetime, setup_intent: str | None = None
) -> BillingCustomer:
    """The customer with a usable default card: ``payment_method`` saved first if given (checked
    against ``setup_intent`` when given: payment_method_update)."""
    if payment_method:
        return payment_method_update(
            team=team, payment_method=payment_method, setup_intent=setup_intent, actor=actor, now=now
        )
    customer = BillingCustomer.objects.filter(team=team).first()
    if customer is None or not customer.default_payment_method_id:
        raise PaymentMethodRequired("A paid tier needs a card on file: choose a payment method.")
    return customer
