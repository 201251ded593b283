"""The billing engine: subscribing and changing tiers (with proration), period close (invoices),
charging (payments), dunning, refunds and comps. Every write of billing state goes through here.

The signatures and contracts below are what the pages, the account API, the admin, the webhook
processor and the Celery tasks call (the interface the lead wrote; names, arguments and return types
are kept, a few optional keyword arguments were added).

Time: every function that depends on time takes ``now`` (default ``timezone.now()``), so billing can
be run forward in simulated time without patching.
Exactly-once: invoices are unique on ``billing_key``; payments on (invoice, attempt) and on their
idempotency key; the period advance is a compare-and-set on the old period end.

How money moves (DESIGN.md, "Money and time"): TierLab decides what is owed (periods, proration,
invoices, dunning); Stripe only executes charges and refunds. The rules, and why:

- Checkout charges (an ``initial`` invoice for free -> paid, a ``proration`` invoice for an upgrade)
  are made while the customer waits. The subscription changes only once the charge has succeeded
  (``payment_outcome_record`` applies it), so a decline leaves the subscription exactly as it was,
  with nothing to undo, and a crash between the charge and the local update is healed by whoever
  records the outcome later (the next pass, or the webhook). A checkout charge gets one attempt: a
  declined one voids its invoice, no dunning (the customer saw the error and can try another card).
- Renewals are charged off-session by ``billing_run`` and, when they fail, go through dunning:
  ``past_due`` at the first failure, retries TIERLAB_DUNNING_RETRY_DAYS after that first failure,
  and after the last retry the invoice is written off (uncollectible) and the team moved to the free
  tier. Nothing is deleted.
- A Payment row (pending) is committed BEFORE Stripe is called, carrying the attempt's idempotency key
  and the metadata Stripe stores with the PaymentIntent. So there is never a charge we have no record
  of: a pending row whose outcome never arrived is looked up in Stripe by that metadata before anything
  is charged again (localstripe ignores idempotency keys, so the lookup is what keeps us honest).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q, Sum
from django.utils import timezone

from accounts.emails import team_owner_emails
from accounts.models import AuditEntry
from accounts.services import audit_entry_create
from billing import close as billing_close
from billing import emails
from billing import stripe_gateway as gateway
from billing.close import CLOSE_BATCH_SIZE, PeriodCloseResult
from billing.models import BillingCustomer, Invoice, InvoiceLine, Payment, Refund
from billing.proration import proration_compute
from core.errors import ApplicationError
from core.periods import period_bounds
from core.templatetags.tier_format import money
from tiers import catalog
from tiers.models import Subscription, Tier
from tiers.pricing import overage_line_values
from tiers.selectors import entitlements_cache_clear, subscription_current
from tiers.services import InvalidTierChange, TierUnavailable, subscription_create
from usage.selectors import usage_totals_by_model

if TYPE_CHECKING:
    from accounts.models import Team, User
    from billing.stripe_gateway import PaymentIntentResult

logger = logging.getLogger(__name__)

# A pending Payment without an outcome may be a charge another process is making right now: the row
# is committed before Stripe is called, and the call takes up to the gateway's read timeout (10 s).
# Only after this long (wall-clock time: it is about processes, not about the simulated billing
# clock) is it treated as abandoned (a crash) and looked up in Stripe. A minute is six times the
# timeout, and short enough that the next pass (beat runs one every minute) picks it up.
PAYMENT_IN_FLIGHT = timedelta(seconds=60)
# Payment.failure_code of a pending attempt whose call ended in PaymentProviderUnavailable: the call is
# over (not in flight), so the next pass may look it up at once instead of waiting PAYMENT_IN_FLIGHT.
FAILURE_PROVIDER_UNAVAILABLE = "provider_unavailable"
FAILURE_NO_PAYMENT_METHOD = "no_payment_method"
FAILURE_NOT_SENT = "not_sent"
# After this many consecutive "Stripe unreachable" answers a pass stops charging: the rest would time
# out one by one too. The next pass (a minute later) starts over.
PROVIDER_DOWN_AFTER = 3
# Invoices the customer waits for at checkout: one attempt, voided on failure, never dunned.
CHECKOUT_KINDS = (Invoice.Kind.INITIAL, Invoice.Kind.PRORATION)
# PaymentIntent status -> Payment status. "processing" (and anything unknown) stays pending until a
# webhook or a later lookup settles it.
_INTENT_STATUS = {
    "succeeded": Payment.Status.SUCCEEDED,
    "requires_payment_method": Payment.Status.FAILED,
    "requires_confirmation": Payment.Status.FAILED,
    "requires_action": Payment.Status.REQUIRES_ACTION,
    "canceled": Payment.Status.CANCELED,
}
_FAILED_STATUSES = (Payment.Status.FAILED, Payment.Status.REQUIRES_ACTION, Payment.Status.CANCELED)


class BillingError(ApplicationError):
    code = "billing_error"


class PaymentMethodRequired(BillingError):
    """A paid tier needs a card on file (also for trials)."""

    code = "payment_method_required"
    status = 402
    type = "payment_error"


@dataclass(frozen=True)
class CheckoutResult:
    """What a subscribe/change did. ``change`` is one of: "subscribed" (charged now), "trial_started",
    "upgraded" (prorated difference charged now), "downgrade_scheduled" (at period end),
    "cancel_scheduled", "resumed"; and "canceled" (an operator's cancel, effective now)."""

    subscription: Subscription
    change: str
    invoice: Invoice | None = None
    payment: Payment | None = None


@dataclass
class BillingRunResult:
    periods_closed: int = 0
    invoices_created: int = 0
    payments_attempted: int = 0
    payments_succeeded: int = 0
    payments_failed: int = 0
    downgraded: int = 0
    errors: list[str] = field(default_factory=list)
    # Scheduled downgrades and cancels applied at a period boundary, and trials that ended.
    changes_applied: int = 0


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


# --- Small helpers ----------------------------------------------------------------------------------


def _now(now: datetime | None) -> datetime:
    return now or timezone.now()


def _audit(
    *,
    team_id: int | None,
    action: AuditEntry.Action,
    description: str,
    now: datetime,
    actor: User | None = None,
    **data: Any,
) -> AuditEntry:
    return audit_entry_create(team_id=team_id, action=action, description=description, now=now, actor=actor, data=data)


def _entitlements_changed() -> None:
    # After the commit, so a reload sees the new tier/status. This clears only this process's cache;
    # other web processes see the change within TIERLAB_AUTH_CACHE_SECONDS (accepted: DESIGN.md).
    transaction.on_commit(entitlements_cache_clear)


def _free_tier() -> Tier:
    tier = Tier.objects.filter(slug=catalog.FREE_TIER_SLUG).first()
    if tier is None:
        raise BillingError(
            f"The free tier ('{catalog.FREE_TIER_SLUG}') does not exist: run `manage.py seed_tiers`.",
            code="free_tier_missing",
        )
    return tier


def _day(value: datetime, now: datetime) -> str:
    """ "Mar 1", with the year when it is not the current one ("Mar 1, 2027")."""
    text = f"{value:%b} {value.day}"
    return text if value.year == now.year else f"{text}, {value.year}"


def _usage_tokens(*, team_id: int, start: datetime, end: datetime) -> int:
    """Tokens the team used in [start, end), exactly: usage's selector (rollups + records not folded
    yet), the same figure the dashboard's estimate shows."""
    return sum(row["total_tokens"] for row in usage_totals_by_model(team_id=team_id, start=start, end=end))


# --- Customers and cards ------------------------------------------------------------------------------


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


def payment_method_update(
    *, team: Team, payment_method: str, actor: User | None = None, now: datetime | None = None
) -> BillingCustomer:
    """Attach ``payment_method`` (a Stripe test PM such as "pm_card_visa") and make it the default.
    A decline raises stripe_gateway.PaymentDeclined and changes nothing locally.

    An open renewal invoice waiting for its next dunning retry is brought forward to ``now``: whoever
    fixes their card should not wait days for the retry (Stripe retries on a card update as well)."""
    now = _now(now)
    customer = billing_customer_ensure(team=team, now=now)
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
        _audit(
            team_id=team.pk,
            actor=actor,
            action=AuditEntry.Action.PAYMENT_METHOD_UPDATED,
            description=f"Card on file is now {card.brand} ending in {card.last4}.",
            now=now,
            payment_method=card.payment_method_id,
        )
    return customer


def _card_on_file(*, team: Team, payment_method: str | None, actor: User | None, now: datetime) -> BillingCustomer:
    """The customer with a usable default card: ``payment_method`` attached first if given."""
    if payment_method:
        return payment_method_update(team=team, payment_method=payment_method, actor=actor, now=now)
    customer = BillingCustomer.objects.filter(team=team).first()
    if customer is None or not customer.default_payment_method_id:
        raise PaymentMethodRequired("A paid tier needs a card on file: choose a payment method.")
    return customer


# --- Subscribing and changing tiers -----------------------------------------------------------------


def team_has_trialed(*, team: Team) -> bool:
    """Trials are once per team. A subscription keeps its ``trial_end`` for ever (the row is changed in
    place and the field is never cleared), so any row of the team with one means it has had its trial,
    whatever happened after (paid, downgraded, canceled). The checkout page asks the same question."""
    return Subscription.objects.filter(team=team, trial_end__isnull=False).exists()


def _is_upgrade(current: Tier, new: Tier) -> bool:
    """An upgrade (immediate, prorated) is a dearer tier on the same interval and currency. Anything
    else between paid tiers waits for the period end: prorating a monthly period against a yearly
    price would charge a month's share of a year, and a credit in one currency cannot pay for a charge
    in another."""
    return (
        new.price_cents > current.price_cents
        and new.billing_interval == current.billing_interval
        and new.currency == current.currency
    )


def _tier_check_choosable(tier: Tier) -> None:
    if tier.is_archived:
        raise TierUnavailable(f"Tier '{tier.slug}' is archived and cannot be chosen.", extra={"tier": tier.slug})
    if not tier.is_public:
        raise TierUnavailable(f"Tier '{tier.slug}' is not available for sign-up.", extra={"tier": tier.slug})


def _subscription_current_or_free(*, team: Team, now: datetime) -> Subscription:
    """The team's current subscription; a team without one (every team gets one at sign-up, so only
    data from before that rule) gets a free one first, so there is one row to change in place."""
    subscription = subscription_current(team=team)
    if subscription is None:
        subscription = subscription_create(team=team, tier=_free_tier(), now=now)
    return subscription


def _lock_subscription(pk: int) -> Subscription:
    # OF self: lock the subscription row only, not the tiers joined in (PostgreSQL would lock those too,
    # serialising every change on a tier, and refuses FOR UPDATE on the nullable side of the
    # pending_tier outer join).
    return Subscription.objects.select_for_update(of=("self",)).select_related("tier", "pending_tier").get(pk=pk)


def subscription_change(
    *, team: Team, tier: Tier, payment_method: str | None = None, actor: User | None = None, now: datetime | None = None
) -> CheckoutResult:
    """Subscribe ``team`` to ``tier`` or change to it (the checkout page and POST /api/v1/subscription).

    - From free (or a canceled/trialing-free state) to a paid tier: a card is required
      (``payment_method``, or the one on file); a tier with trial days starts trialing without a charge
      (once per team); otherwise a new period starts now and its fee is invoiced and charged now.
    - Paid to a more expensive tier (upgrade): takes effect now; the prorated difference for the rest
      of the current period is invoiced (credit + charge lines) and charged now.
    - To a cheaper tier or to free (downgrade): scheduled for the period end (``pending_tier``), undoable.
    - A declined card (at attach or at the immediate charge) raises PaymentDeclined and changes nothing:
      no tier change, the invoice (if any) is voided.
    Raises tiers.services.InvalidTierChange (same tier, nothing to do) or TierUnavailable (archived,
    not public).

    Also: choosing the current tier again while a change is scheduled undoes it ("resumed"); while
    trialing, a dearer tier is switched to at once without a charge (the trial goes on) and the rest
    is scheduled like a downgrade; a past-due subscription can be downgraded but not upgraded.
    """
    now = _now(now)
    _tier_check_choosable(tier)
    subscription = _subscription_current_or_free(team=team, now=now)
    current = subscription.tier
    if subscription.status == Subscription.Status.SUSPENDED:
        raise InvalidTierChange("This subscription is suspended: contact support to change it.", code="suspended")
    if tier.pk == current.pk:
        if subscription.pending_tier_id is not None or subscription.cancel_at_period_end:
            return subscription_resume(team=team, actor=actor, now=now)
        raise InvalidTierChange(f"You are already on {tier.name}.", extra={"tier": tier.slug})
    if tier.is_free:
        return _change_schedule(subscription=subscription, tier=tier, actor=actor, now=now)

    if current.is_free:
        customer = _card_on_file(team=team, payment_method=payment_method, actor=actor, now=now)
        if tier.trial_days and not team_has_trialed(team=team):
            return _trial_start(subscription=subscription, tier=tier, actor=actor, now=now)
        return _checkout_charge(
            kind=Invoice.Kind.INITIAL, subscription=subscription, tier=tier, customer=customer, actor=actor, now=now
        )

    if not _is_upgrade(current, tier):
        if payment_method:
            payment_method_update(team=team, payment_method=payment_method, actor=actor, now=now)
        return _change_schedule(subscription=subscription, tier=tier, actor=actor, now=now)
    if subscription.status == Subscription.Status.PAST_DUE:
        raise InvalidTierChange(
            "Your last payment failed: update your card so the open invoice can be paid before upgrading.",
            code="subscription_past_due",
        )
    if subscription.status == Subscription.Status.TRIALING:
        if payment_method:
            payment_method_update(team=team, payment_method=payment_method, actor=actor, now=now)
        return _trial_tier_switch(subscription=subscription, tier=tier, actor=actor, now=now)
    customer = _card_on_file(team=team, payment_method=payment_method, actor=actor, now=now)
    return _checkout_charge(
        kind=Invoice.Kind.PRORATION, subscription=subscription, tier=tier, customer=customer, actor=actor, now=now
    )


@dataclass(frozen=True)
class CheckoutPlan:
    """What ``subscription_change`` would do now, for the checkout page to say before the POST."""

    kind: str  # "current", "subscribe", "trial", "trial_switch", "upgrade", "downgrade"
    card_needed: bool
    effective_at: datetime | None = None  # the trial's end, or the scheduled change's date
    estimate_cents: int | None = None  # an upgrade's prorated difference, at ``now``


def subscription_change_preview(*, team: Team, tier: Tier, now: datetime | None = None) -> CheckoutPlan:
    """The branch ``subscription_change`` takes for ``tier`` at ``now``, without changing anything.
    The charge at the POST, seconds later, can only be smaller than the estimate (by a cent or so)."""
    now = _now(now)
    subscription = subscription_current(team=team)
    current = subscription.tier if subscription is not None else None
    if (current is not None and current.pk == tier.pk) or ((current is None or current.is_free) and tier.is_free):
        return CheckoutPlan(kind="current", card_needed=False)
    if current is None or current.is_free:
        if tier.trial_days and not team_has_trialed(team=team):
            return CheckoutPlan(kind="trial", card_needed=True, effective_at=now + timedelta(days=tier.trial_days))
        return CheckoutPlan(kind="subscribe", card_needed=True)
    if tier.is_free or not _is_upgrade(current, tier):
        return CheckoutPlan(kind="downgrade", card_needed=False, effective_at=subscription.current_period_end)
    if subscription.status == Subscription.Status.TRIALING:
        return CheckoutPlan(kind="trial_switch", card_needed=True, effective_at=subscription.trial_end)
    proration = proration_compute(
        old_price_cents=current.price_cents,
        new_price_cents=tier.price_cents,
        period_start=subscription.current_period_start,
        period_end=subscription.current_period_end,
        at=now,
    )
    return CheckoutPlan(kind="upgrade", card_needed=True, estimate_cents=proration.total_cents)


def _change_schedule(*, subscription: Subscription, tier: Tier, actor: User | None, now: datetime) -> CheckoutResult:
    """A downgrade (to a cheaper tier or to free) at the end of the period the customer paid for."""
    with transaction.atomic():
        sub = _lock_subscription(subscription.pk)
        sub.pending_tier = tier
        sub.cancel_at_period_end = False
        sub.canceled_at = None
        sub.save(update_fields=["pending_tier", "cancel_at_period_end", "canceled_at", "updated_at"])
        _audit(
            team_id=sub.team_id,
            actor=actor,
            action=AuditEntry.Action.DOWNGRADE_SCHEDULED,
            description=f"{sub.tier.name} -> {tier.name} at the period end ({sub.current_period_end.isoformat()}).",
            now=now,
            from_tier=sub.tier.slug,
            to_tier=tier.slug,
            effective_at=sub.current_period_end.isoformat(),
        )
    return CheckoutResult(subscription=sub, change="downgrade_scheduled")


def _trial_start(*, subscription: Subscription, tier: Tier, actor: User | None, now: datetime) -> CheckoutResult:
    """Start the team's (only) trial: no charge now; the first paid period starts when the trial ends.

    The trial is the current period (now -> trial end), and the anchor moves to the trial's end, so
    every paid period after it is computed from that moment (Stripe does the same). A trial day is 24
    hours of UTC time.
    """
    trial_end = now + timedelta(days=tier.trial_days)
    with transaction.atomic():
        sub = _lock_subscription(subscription.pk)
        sub.tier = tier
        sub.status = Subscription.Status.TRIALING
        sub.trial_end = trial_end
        sub.billing_anchor = trial_end
        sub.current_period_start = now
        sub.current_period_end = trial_end
        sub.pending_tier = None
        sub.cancel_at_period_end = False
        sub.canceled_at = None
        sub.past_due_since = None
        sub.full_clean()
        sub.save()
        _audit(
            team_id=sub.team_id,
            actor=actor,
            action=AuditEntry.Action.TRIAL_STARTED,
            description=f"{tier.name} trial until {trial_end.isoformat()}.",
            now=now,
            tier=tier.slug,
            trial_end=trial_end.isoformat(),
        )
        _entitlements_changed()
    return CheckoutResult(subscription=sub, change="trial_started")


def _trial_tier_switch(*, subscription: Subscription, tier: Tier, actor: User | None, now: datetime) -> CheckoutResult:
    """A dearer tier during the trial: switched now, nothing to prorate (nothing was paid); the trial
    keeps its end, and the first charge is the new tier's fee."""
    with transaction.atomic():
        sub = _lock_subscription(subscription.pk)
        old = sub.tier
        sub.tier = tier
        sub.pending_tier = None
        sub.cancel_at_period_end = False
        sub.canceled_at = None
        sub.save(update_fields=["tier", "pending_tier", "cancel_at_period_end", "canceled_at", "updated_at"])
        _audit(
            team_id=sub.team_id,
            actor=actor,
            action=AuditEntry.Action.UPGRADED,
            description=f"{old.name} -> {tier.name} during the trial (no charge until it ends).",
            now=now,
            from_tier=old.slug,
            to_tier=tier.slug,
        )
        _entitlements_changed()
    return CheckoutResult(subscription=sub, change="upgraded")


def _checkout_invoices_settle(*, subscription_id: int, now: datetime) -> None:
    """Before a new checkout charge: settle earlier ones whose outcome is unknown (Stripe was down, or a
    process died), so a customer who tries again is never charged twice for the same change. Raises
    BillingError if one is still in flight."""
    open_ids = list(
        Invoice.objects.filter(
            subscription_id=subscription_id, kind__in=CHECKOUT_KINDS, status=Invoice.Status.OPEN
        ).values_list("pk", flat=True)
    )
    for invoice_id in open_ids:
        _invoice_pay(invoice_id=invoice_id, now=now)
    if Invoice.objects.filter(pk__in=open_ids, status=Invoice.Status.OPEN).exists():
        raise BillingError(
            "A payment for this subscription is still in progress; try again in a minute.",
            code="payment_in_progress",
        )


def _checkout_charge(
    *,
    kind: str,
    subscription: Subscription,
    tier: Tier,
    customer: BillingCustomer,
    actor: User | None,
    now: datetime,
) -> CheckoutResult:
    """Invoice and charge a checkout (``initial``: the first period of a paid tier from now;
    ``proration``: an upgrade for the rest of the current period). The subscription changes when the
    charge succeeds (see payment_outcome_record), never before."""
    _checkout_invoices_settle(subscription_id=subscription.pk, now=now)
    with transaction.atomic():
        sub = _lock_subscription(subscription.pk)
        current = sub.tier
        if current.pk != subscription.tier_id:
            raise InvalidTierChange("The subscription changed meanwhile; please try again.", code="concurrent_change")
        # Under the subscription's lock: a second checkout that started before this one committed (a
        # double click) finds this one's invoice here and stops, rather than charging again.
        if Invoice.objects.filter(subscription=sub, kind__in=CHECKOUT_KINDS, status=Invoice.Status.OPEN).exists():
            raise BillingError(
                "A payment for this subscription is still in progress; try again in a minute.",
                code="payment_in_progress",
            )
        if kind == Invoice.Kind.INITIAL:
            # The anchor becomes now: the first paid period starts at the moment of payment.
            start, end = period_bounds(now, tier.billing_interval, 0)
            billing_key = f"initial:{sub.pk}:{start.isoformat()}"
            lines = [
                InvoiceLine(
                    kind=InvoiceLine.Kind.FEE,
                    description=billing_close.fee_description(tier=tier, start=start, end=end),
                    tier=tier,
                    quantity=1,
                    unit_amount_cents=tier.price_cents,
                    amount_cents=tier.price_cents,
                    period_start=start,
                    period_end=end,
                )
            ]
        else:
            start, end = now, sub.current_period_end
            proration = proration_compute(
                old_price_cents=current.price_cents,
                new_price_cents=tier.price_cents,
                period_start=sub.current_period_start,
                period_end=sub.current_period_end,
                at=now,
            )
            billing_key = f"proration:{sub.pk}:{now.isoformat()}"
            share = f"{float(proration.fraction):.1%} of the period"  # display only; amounts are exact
            lines = [
                InvoiceLine(
                    kind=InvoiceLine.Kind.PRORATION_CREDIT,
                    description=f"Unused time on {current.name} ({share})",
                    tier=current,
                    quantity=1,
                    unit_amount_cents=proration.credit_cents,
                    amount_cents=proration.credit_cents,
                    period_start=start,
                    period_end=end,
                ),
                InvoiceLine(
                    kind=InvoiceLine.Kind.PRORATION_CHARGE,
                    description=f"Remaining time on {tier.name} ({share})",
                    tier=tier,
                    quantity=1,
                    unit_amount_cents=proration.charge_cents,
                    amount_cents=proration.charge_cents,
                    period_start=start,
                    period_end=end,
                ),
            ]
        invoice = Invoice.objects.create(
            billing_key=billing_key,
            team_id=sub.team_id,
            subscription=sub,
            kind=kind,
            status=Invoice.Status.OPEN,
            currency=tier.currency,
            total_cents=sum(line.amount_cents for line in lines),
            period_start=start,
            period_end=end,
            issued_at=now,
        )
        for line in lines:
            line.invoice = invoice
        InvoiceLine.objects.bulk_create(lines)
        billing_close.invoice_numbers_assign([invoice.pk])
        payment = _payment_start(invoice=invoice, now=now) if invoice.total_cents > 0 else None
        _audit(
            team_id=sub.team_id,
            actor=actor,
            action=AuditEntry.Action.CHECKOUT_STARTED,
            description=f"{current.name} -> {tier.name}: invoice for {money(invoice.total_cents, invoice.currency)}.",
            now=now,
            from_tier=current.slug,
            to_tier=tier.slug,
            invoice_id=invoice.pk,
        )
    # Committed: the invoice and the pending attempt exist before Stripe hears of the charge.
    if payment is None:
        # A change in the period's last moments prorates to nothing: paid at once, nothing to charge.
        _invoice_settle_without_charge(invoice_id=invoice.pk, now=now)
    else:
        payment = _payment_send(payment=payment, invoice=invoice, customer=customer, now=now)
    invoice.refresh_from_db()
    sub.refresh_from_db()
    change = "subscribed" if kind == Invoice.Kind.INITIAL else "upgraded"
    if invoice.status == Invoice.Status.PAID:
        return CheckoutResult(subscription=sub, change=change, invoice=invoice, payment=payment)
    if payment is not None and payment.status == Payment.Status.PENDING:
        raise BillingError(
            "Your payment is still processing; your tier changes as soon as it completes.",
            code="payment_processing",
        )
    message = (payment.failure_message if payment else "") or "Your card was declined."
    extra = {"decline_code": payment.failure_code if payment else "", "invoice": invoice.number}
    if payment is not None and payment.status == Payment.Status.REQUIRES_ACTION:
        raise gateway.PaymentRequiresAction(message, extra=extra)
    raise gateway.PaymentDeclined(message, extra=extra)


def subscription_cancel(
    *, team: Team, immediately: bool = False, actor: User | None = None, now: datetime | None = None
) -> CheckoutResult:
    """Cancel the paid tier: at period end (``cancel_at_period_end``; the team then moves to the free
    tier), or now for operators (``immediately``; no refund here).

    Cancelling is moving to the free tier: the one subscription row of the team stays and changes in
    place (the "one current per team" constraint), so usage, keys and invoices keep their history."""
    now = _now(now)
    with transaction.atomic():
        current = subscription_current(team=team)
        if current is None:
            raise InvalidTierChange("There is no subscription to cancel.", code="nothing_to_cancel")
        sub = _lock_subscription(current.pk)
        if sub.tier.is_free:
            raise InvalidTierChange("The free tier has nothing to cancel.", code="nothing_to_cancel")
        if immediately:
            old = sub.tier
            free = _subscription_restart_on_free(sub=sub, now=now, canceled=True)
            _audit(
                team_id=sub.team_id,
                actor=actor,
                action=AuditEntry.Action.CANCELED_NOW,
                description=f"{old.name} canceled now; moved to {free.name}. No refund.",
                now=now,
                from_tier=old.slug,
                to_tier=free.slug,
            )
            _entitlements_changed()
            return CheckoutResult(subscription=sub, change="canceled")
        if sub.cancel_at_period_end:
            return CheckoutResult(subscription=sub, change="cancel_scheduled")
        sub.cancel_at_period_end = True
        sub.pending_tier = None
        sub.canceled_at = now
        sub.save(update_fields=["cancel_at_period_end", "pending_tier", "canceled_at", "updated_at"])
        _audit(
            team_id=sub.team_id,
            actor=actor,
            action=AuditEntry.Action.CANCEL_SCHEDULED,
            description=f"{sub.tier.name} cancels at the period end ({sub.current_period_end.isoformat()}).",
            now=now,
            tier=sub.tier.slug,
            effective_at=sub.current_period_end.isoformat(),
        )
    return CheckoutResult(subscription=sub, change="cancel_scheduled")


def subscription_resume(*, team: Team, actor: User | None = None, now: datetime | None = None) -> CheckoutResult:
    """Undo a scheduled cancel or downgrade."""
    now = _now(now)
    with transaction.atomic():
        current = subscription_current(team=team)
        if current is None or (current.pending_tier_id is None and not current.cancel_at_period_end):
            raise InvalidTierChange("There is no scheduled change to undo.", code="nothing_to_resume")
        sub = _lock_subscription(current.pk)
        undone = "cancel" if sub.cancel_at_period_end else f"move to {sub.pending_tier.name}"
        sub.pending_tier = None
        sub.cancel_at_period_end = False
        sub.canceled_at = None
        sub.save(update_fields=["pending_tier", "cancel_at_period_end", "canceled_at", "updated_at"])
        _audit(
            team_id=sub.team_id,
            actor=actor,
            action=AuditEntry.Action.CHANGE_UNDONE,
            description=f"Scheduled {undone} undone; staying on {sub.tier.name}.",
            now=now,
            tier=sub.tier.slug,
        )
    return CheckoutResult(subscription=sub, change="resumed")


def subscription_tier_set_by_operator(
    *, subscription: Subscription, tier: Tier, actor: User, reason: str, now: datetime | None = None
) -> Subscription:
    """Operators move a customer to ``tier`` now, without a proration charge; written to the audit log.

    The current period and anchor stay: the next renewal charges the new tier's fee, so the rest of
    this period on a dearer tier is on the house (the operator's call, and the reason says why).
    Scheduled changes are dropped (the operator decided); open invoices are left to comp or dunning.
    Non-public tiers (Enterprise) are allowed here; archived ones are not.
    """
    now = _now(now)
    if not (reason or "").strip():
        raise BillingError("Say why: a tier change by an operator needs a reason.", code="reason_required")
    if tier.is_archived:
        raise TierUnavailable(f"Tier '{tier.slug}' is archived and cannot be chosen.", extra={"tier": tier.slug})
    with transaction.atomic():
        sub = _lock_subscription(subscription.pk)
        if sub.tier_id == tier.pk and sub.pending_tier_id is None and not sub.cancel_at_period_end:
            raise InvalidTierChange(f"{sub.team} is already on {tier.name}.", extra={"tier": tier.slug})
        old = sub.tier
        sub.tier = tier
        sub.pending_tier = None
        sub.cancel_at_period_end = False
        sub.canceled_at = None
        if tier.is_free and sub.status == Subscription.Status.TRIALING:
            sub.status = Subscription.Status.ACTIVE  # nothing left to try out
        sub.save()
        _audit(
            team_id=sub.team_id,
            actor=actor,
            action=AuditEntry.Action.TIER_SET_BY_OPERATOR,
            description=f"{old.name} -> {tier.name}: {reason}",
            now=now,
            from_tier=old.slug,
            to_tier=tier.slug,
            reason=reason,
        )
        _entitlements_changed()
    subscription.refresh_from_db()
    return sub


# --- Period close -----------------------------------------------------------------------------------------


def billing_periods_close(*, now: datetime | None = None, batch_size: int = CLOSE_BATCH_SIZE) -> PeriodCloseResult:
    """The local part of a pass: close every period that ended by ``now`` (invoice + advance, applying
    scheduled changes and ending trials). No Stripe call; the invoices it issues are due at once.
    Set-based, a fixed number of statements per batch of ``batch_size`` (tiers/billing_close.py).

    Past-due subscriptions are left alone: they do not renew until their open invoice is paid (or comped)
    or dunning ends (then they move to free, with a new period). Suspended ones are not billed.
    Each subscription is visited at most once per pass, so a paid subscription that is several periods
    behind catches up one period per pass, each renewal charged before the next is issued.
    """
    result = billing_close.periods_close(now=_now(now), free=_free_tier(), batch_size=batch_size)
    if result.periods_closed:
        entitlements_cache_clear()
    return result


# --- Charging ----------------------------------------------------------------------------------------------


def _payment_start(*, invoice: Invoice, now: datetime) -> Payment:
    """Record the next attempt (pending) of ``invoice``, which the caller has locked. Committed by the
    caller BEFORE Stripe is called."""
    attempt = invoice.attempt_count + 1
    payment = Payment.objects.create(
        invoice=invoice,
        attempt=attempt,
        idempotency_key=f"invoice:{invoice.pk}:attempt:{attempt}",
        amount_cents=invoice.total_cents,
        currency=invoice.currency,
        status=Payment.Status.PENDING,
        created_at=now,
    )
    invoice.attempt_count = attempt
    invoice.next_attempt_at = None  # dunning sets the next one if this attempt fails
    invoice.save(update_fields=["attempt_count", "next_attempt_at"])
    return payment


def _charge_metadata(*, invoice_id: int, attempt: int, team_id: int) -> dict[str, str]:
    # Stored with the PaymentIntent by Stripe: what payment_intent_find matches a lost outcome by, and
    # what payment_outcome_record finds the Payment by when a webhook comes before the id is saved.
    return {"invoice_id": str(invoice_id), "attempt": str(attempt), "team_id": str(team_id)}


def _payment_send(*, payment: Payment, invoice: Invoice, customer: BillingCustomer | None, now: datetime) -> Payment:
    """Charge one recorded attempt and apply its outcome. PaymentProviderUnavailable is re-raised with
    the attempt left pending (marked, so the next pass looks it up at once)."""
    if customer is None or not customer.default_payment_method_id:
        return _payment_outcome_apply(
            payment_id=payment.pk,
            status=Payment.Status.FAILED,
            failure_code=FAILURE_NO_PAYMENT_METHOD,
            failure_message="There is no card on file.",
            now=now,
        )
    try:
        intent = gateway.payment_intent_create(
            customer_id=customer.stripe_customer_id,
            payment_method_id=customer.default_payment_method_id,
            amount_cents=payment.amount_cents,
            currency=payment.currency,
            metadata=_charge_metadata(invoice_id=invoice.pk, attempt=payment.attempt, team_id=invoice.team_id),
            idempotency_key=payment.idempotency_key,
            description=f"TierLab invoice {invoice.number}",
        )
    except gateway.PaymentProviderUnavailable as exc:
        _payment_mark_unreachable(payment=payment, exc=exc)
        raise
    except gateway.PaymentRequiresAction as exc:
        return _payment_outcome_apply(
            payment_id=payment.pk,
            status=Payment.Status.REQUIRES_ACTION,
            failure_code=exc.code,
            failure_message=exc.message,
            now=now,
        )
    except (gateway.PaymentDeclined, gateway.PaymentInvalidRequest) as exc:
        # The gateway raises a decline only when no PaymentIntent was left behind (nothing charged);
        # an invalid request (a detached card, say) charged nothing either. Both are failed attempts.
        return _payment_outcome_apply(
            payment_id=payment.pk,
            status=Payment.Status.FAILED,
            failure_code=str(exc.extra.get("decline_code") or exc.code),
            failure_message=exc.message,
            now=now,
        )
    return _payment_outcome_apply(
        payment_id=payment.pk,
        status=_INTENT_STATUS.get(intent.status, Payment.Status.PENDING),
        intent_id=intent.id,
        failure_code=intent.failure_code,
        failure_message=intent.failure_message,
        now=now,
    )


def _payment_mark_unreachable(*, payment: Payment, exc: gateway.PaymentProviderUnavailable) -> None:
    """The attempt stays pending (did the charge happen? unknown), marked so the next pass looks it up
    at once rather than waiting PAYMENT_IN_FLIGHT: the call is over, nobody is waiting on it."""
    Payment.objects.filter(pk=payment.pk, status=Payment.Status.PENDING).update(
        failure_code=FAILURE_PROVIDER_UNAVAILABLE, failure_message=exc.message[:500], updated_at=timezone.now()
    )


def _payment_in_flight(payment: Payment) -> bool:
    if payment.failure_code == FAILURE_PROVIDER_UNAVAILABLE:
        return False  # the call that made it returned (with an error): nobody is waiting on it
    return payment.updated_at > timezone.now() - PAYMENT_IN_FLIGHT


def _payment_recover(*, payment: Payment, invoice: Invoice, now: datetime) -> tuple[Payment, bool]:
    """Settle a pending attempt whose outcome never arrived. Returns (payment, charged_now).

    Never charges twice: the attempt is first looked up in Stripe (by its PaymentIntent id, or by the
    metadata sent with it). Found: its outcome is applied. Not found: the charge never reached Stripe,
    so a renewal sends the SAME attempt again (same idempotency key and metadata); a checkout charge is
    voided instead, since its customer has gone (they were told it failed and may try again).
    """
    customer = BillingCustomer.objects.filter(team_id=invoice.team_id).first()
    try:
        if payment.stripe_payment_intent_id:
            intent = gateway.payment_intent_retrieve(payment_intent_id=payment.stripe_payment_intent_id)
        elif customer is None:
            intent = None
        else:
            metadata = _charge_metadata(invoice_id=invoice.pk, attempt=payment.attempt, team_id=invoice.team_id)
            metadata.pop("team_id")  # invoice + attempt identify it; fewer keys to disagree on
            intent = gateway.payment_intent_find(customer_id=customer.stripe_customer_id, metadata=metadata)
    except gateway.PaymentProviderUnavailable as exc:
        _payment_mark_unreachable(payment=payment, exc=exc)
        raise
    if intent is not None:
        logger.info("payment %s: outcome recovered from %s (%s)", payment.pk, intent.id, intent.status)
        return payment_outcome_record(intent=intent, now=now) or payment, False
    if invoice.kind in CHECKOUT_KINDS:
        return (
            _payment_outcome_apply(
                payment_id=payment.pk,
                status=Payment.Status.FAILED,
                failure_code=FAILURE_NOT_SENT,
                failure_message="The payment provider could not be reached; nothing was charged.",
                now=now,
            ),
            False,
        )
    return _payment_send(payment=payment, invoice=invoice, customer=customer, now=now), True


def _invoice_pay(*, invoice_id: int, now: datetime) -> tuple[Payment | None, bool]:
    """invoice_pay's work. Returns (payment, charged_now): ``charged_now`` is False when the attempt
    was in flight elsewhere or was recovered rather than sent."""
    customer = None
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
        if invoice.status != Invoice.Status.OPEN:
            return None, False
        pending = invoice.payments.filter(status=Payment.Status.PENDING).order_by("-attempt").first()
        if pending is None:
            if invoice.total_cents <= 0:
                payment = None
            elif invoice.kind in CHECKOUT_KINDS and invoice.attempt_count >= 1:
                # A checkout charge gets one attempt; this one failed without voiding (it cannot, but
                # if it ever did, charging a customer who has left would be wrong): void it.
                _invoice_void_locked(invoice=invoice, now=now)
                return None, False
            elif invoice.attempt_count >= 1 + len(settings.TIERLAB_DUNNING_RETRY_DAYS):
                return None, False  # out of retries: dunning ends it (billing_run's sweep)
            else:
                payment = _payment_start(invoice=invoice, now=now)
                customer = BillingCustomer.objects.filter(team_id=invoice.team_id).first()
        elif _payment_in_flight(pending):
            return pending, False
        else:
            # Claim the abandoned attempt (under the invoice lock) before looking it up: it now looks
            # in flight to any other pass for PAYMENT_IN_FLIGHT, so two passes never both find it
            # missing in Stripe and both send it again.
            Payment.objects.filter(pk=pending.pk).update(failure_code="", updated_at=timezone.now())
    if pending is not None:
        return _payment_recover(payment=pending, invoice=invoice, now=now)
    if payment is None:
        _invoice_settle_without_charge(invoice_id=invoice.pk, now=now)
        return None, False
    return _payment_send(payment=payment, invoice=invoice, customer=customer, now=now), True


def invoice_pay(*, invoice: Invoice, now: datetime | None = None) -> Payment | None:
    """One charge attempt of an open invoice with the team's default card (exactly once per attempt);
    None if there is nothing to charge (paid, void, zero total).

    The attempt is recorded (pending, committed) before Stripe is called. If an earlier attempt is
    still pending, no new one is made: it is returned as is while it may be in flight (PAYMENT_IN_FLIGHT),
    else recovered (see _payment_recover). Raises PaymentProviderUnavailable when Stripe cannot be
    reached; the attempt stays pending and the next call completes it. ``invoice`` is refreshed."""
    payment, _ = _invoice_pay(invoice_id=invoice.pk, now=_now(now))
    invoice.refresh_from_db()
    return payment


def _payment_for_intent(intent: PaymentIntentResult) -> Payment | None:
    payment = Payment.objects.filter(stripe_payment_intent_id=intent.id).first()
    if payment is not None:
        return payment
    try:
        invoice_id = int(intent.metadata.get("invoice_id", ""))
        attempt = int(intent.metadata.get("attempt", ""))
    except ValueError:
        return None  # not one of our charges
    return Payment.objects.filter(invoice_id=invoice_id, attempt=attempt).first()


def payment_outcome_record(*, intent: PaymentIntentResult, now: datetime | None = None) -> Payment | None:
    """Apply a PaymentIntent's outcome (from the charge call or a webhook, in any order, any number of
    times) to its Payment, invoice and subscription; sends the receipt / payment-failed email once.

    None if the PaymentIntent is not one of ours. Success is final: a failure arriving after it (an
    older event) changes nothing; the same outcome twice changes nothing the second time."""
    payment = _payment_for_intent(intent)
    if payment is None:
        return None
    if payment.stripe_payment_intent_id and payment.stripe_payment_intent_id != intent.id:
        # The same attempt charged by two PaymentIntents: it cannot happen through this module (an
        # attempt is sent again only after Stripe said it has no PaymentIntent for it), but if it ever
        # did, a person must refund one of them.
        if intent.succeeded:
            logger.error("payment %s: second PaymentIntent %s for one attempt succeeded", payment.pk, intent.id)
            _audit(
                team_id=payment.invoice.team_id,
                action=AuditEntry.Action.DUPLICATE_CHARGE,
                description=f"PaymentIntent {intent.id} also charged attempt {payment.attempt}: refund one.",
                now=_now(now),
                payment_id=payment.pk,
                payment_intent=intent.id,
            )
        return payment
    return _payment_outcome_apply(
        payment_id=payment.pk,
        status=_INTENT_STATUS.get(intent.status, Payment.Status.PENDING),
        intent_id=intent.id,
        failure_code=intent.failure_code,
        failure_message=intent.failure_message,
        now=_now(now),
    )


def _payment_outcome_apply(
    *,
    payment_id: int,
    status: str,
    now: datetime,
    intent_id: str = "",
    failure_code: str = "",
    failure_message: str = "",
) -> Payment:
    """The state machine of an attempt, under row locks (invoice, then payment, then subscription, the
    same order as invoice_pay takes them). Every effect (invoice paid, tier change, dunning step,
    email) happens on a transition of the Payment row, so it happens once, whoever gets here first."""
    with transaction.atomic():
        invoice_id = Payment.objects.filter(pk=payment_id).values_list("invoice_id", flat=True).get()
        invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
        payment = Payment.objects.select_for_update().get(pk=payment_id)
        previous = payment.status
        fields = {"updated_at"}
        if intent_id and not payment.stripe_payment_intent_id:
            payment.stripe_payment_intent_id = intent_id
            fields.add("stripe_payment_intent_id")
        settled = previous == Payment.Status.SUCCEEDED
        if settled or status == Payment.Status.PENDING or status == previous:
            payment.save(update_fields=fields)  # a duplicate, a stale event, or still processing
            return payment
        payment.status = status
        fields.add("status")
        if status == Payment.Status.SUCCEEDED:
            payment.failure_code, payment.failure_message = "", ""
        else:
            payment.failure_code, payment.failure_message = failure_code[:100], failure_message[:500]
        fields |= {"failure_code", "failure_message"}
        payment.save(update_fields=fields)
        if status == Payment.Status.SUCCEEDED:
            _payment_succeeded(payment=payment, invoice=invoice, now=now)
        elif previous == Payment.Status.PENDING:
            # pending -> failed/requires_action/canceled: one dunning step. failed -> canceled (a later
            # event of the same failed attempt) is recorded above and changes nothing else.
            _payment_failed(payment=payment, invoice=invoice, now=now)
    return payment


def _subscription_restore_if_settled(*, sub: Subscription, invoice: Invoice) -> None:
    """A past-due subscription becomes active again once no renewal invoice of it is left open."""
    if sub.status != Subscription.Status.PAST_DUE:
        return
    still_open = (
        Invoice.objects.filter(subscription=sub, kind=Invoice.Kind.RENEWAL, status=Invoice.Status.OPEN)
        .exclude(pk=invoice.pk)
        .exists()
    )
    if not still_open:
        sub.status = Subscription.Status.ACTIVE
        sub.past_due_since = None
        sub.save(update_fields=["status", "past_due_since", "updated_at"])
        _entitlements_changed()


def _checkout_apply(*, sub: Subscription, invoice: Invoice, now: datetime) -> None:
    """The tier change a paid checkout invoice was for: the tier of its fee (initial) or charge
    (proration) line. Initial: the first paid period is the invoice's period, anchored at its start."""
    line_kind = InvoiceLine.Kind.FEE if invoice.kind == Invoice.Kind.INITIAL else InvoiceLine.Kind.PRORATION_CHARGE
    line = invoice.lines.select_related("tier").filter(kind=line_kind).first()
    if line is None or line.tier is None:
        logger.error("invoice %s: no %s line to take the tier from", invoice.pk, line_kind)
        return
    old = sub.tier
    sub.tier = line.tier
    sub.pending_tier = None
    sub.cancel_at_period_end = False
    sub.canceled_at = None
    if invoice.kind == Invoice.Kind.INITIAL:
        sub.status = Subscription.Status.ACTIVE
        sub.past_due_since = None
        sub.billing_anchor = invoice.period_start
        sub.current_period_start, sub.current_period_end = invoice.period_start, invoice.period_end
    sub.save()
    _audit(
        team_id=sub.team_id,
        action=AuditEntry.Action.SUBSCRIBED if invoice.kind == Invoice.Kind.INITIAL else AuditEntry.Action.UPGRADED,
        description=f"{old.name} -> {line.tier.name}, paid with invoice {invoice.number}.",
        now=now,
        from_tier=old.slug,
        to_tier=line.tier.slug,
        invoice_id=invoice.pk,
    )
    _entitlements_changed()


def _invoice_paid_effects(*, invoice: Invoice, now: datetime) -> None:
    """Mark the (locked, open) invoice paid and apply what paying it means."""
    was = invoice.status
    invoice.status = Invoice.Status.PAID
    invoice.paid_at = now
    invoice.next_attempt_at = None
    invoice.save(update_fields=["status", "paid_at", "next_attempt_at"])
    sub = _lock_subscription(invoice.subscription_id)
    if invoice.kind in CHECKOUT_KINDS:
        _checkout_apply(sub=sub, invoice=invoice, now=now)
    elif was == Invoice.Status.OPEN:
        _subscription_restore_if_settled(sub=sub, invoice=invoice)
    else:
        # Paid after dunning wrote it off: the team was moved to free then and stays there (they can
        # subscribe again); the money is theirs to keep paid for the period it billed.
        _audit(
            team_id=invoice.team_id,
            action=AuditEntry.Action.LATE_PAYMENT,
            description=f"Invoice {invoice.number} was paid after dunning had ended.",
            now=now,
            invoice_id=invoice.pk,
        )


def _payment_succeeded(*, payment: Payment, invoice: Invoice, now: datetime) -> None:
    if invoice.status in (Invoice.Status.OPEN, Invoice.Status.UNCOLLECTIBLE):
        _invoice_paid_effects(invoice=invoice, now=now)
        payment_id = payment.pk
        transaction.on_commit(lambda: emails.receipt_send(payment_id=payment_id))
        return
    # Money arrived for an invoice that is paid by another attempt or void (a checkout voided as
    # "never sent" whose charge did go through after all). Keep the record and tell an operator.
    logger.error("payment %s succeeded on invoice %s, which is %s", payment.pk, invoice.pk, invoice.status)
    _audit(
        team_id=invoice.team_id,
        action=AuditEntry.Action.PAYMENT_ON_CLOSED_INVOICE,
        description=f"Attempt {payment.attempt} of {invoice.number} ({invoice.status}) succeeded: refund it.",
        now=now,
        payment_id=payment.pk,
        invoice_id=invoice.pk,
    )


def _invoice_void_locked(*, invoice: Invoice, now: datetime) -> None:
    invoice.status = Invoice.Status.VOID
    invoice.voided_at = now
    invoice.next_attempt_at = None
    invoice.save(update_fields=["status", "voided_at", "next_attempt_at"])


def _payment_failed(*, payment: Payment, invoice: Invoice, now: datetime) -> None:
    if invoice.status != Invoice.Status.OPEN or payment.attempt != invoice.attempt_count:
        return  # settled meanwhile, or a later attempt exists: this old outcome schedules nothing
    if invoice.kind in CHECKOUT_KINDS:
        # The customer is at the checkout and sees the decline; the subscription was never changed.
        _invoice_void_locked(invoice=invoice, now=now)
        return
    # Dunning. Retries are counted from the FIRST failure of this invoice, not from the previous
    # retry, so the schedule is the same whenever the passes happen to run: with [1, 3, 5] the retries
    # are 1, 3 and 5 days after the renewal first failed. The first failure's time is the creation
    # time (billing clock) of the invoice's first failed attempt, whichever path records it.
    first_failure_at = (
        invoice.payments.filter(status__in=_FAILED_STATUSES).order_by("attempt").values_list("created_at", flat=True)
    ).first() or payment.created_at
    sub = _lock_subscription(invoice.subscription_id)
    retry_days = list(settings.TIERLAB_DUNNING_RETRY_DAYS)
    if payment.attempt > len(retry_days):
        _dunning_end(sub=sub, invoice=invoice, now=now)
        return
    if sub.status in (Subscription.Status.ACTIVE, Subscription.Status.TRIALING):
        sub.status = Subscription.Status.PAST_DUE
    if sub.past_due_since is None:
        sub.past_due_since = first_failure_at
    sub.save(update_fields=["status", "past_due_since", "updated_at"])
    next_attempt_at = first_failure_at + timedelta(days=retry_days[payment.attempt - 1])
    invoice.next_attempt_at = next_attempt_at
    invoice.save(update_fields=["next_attempt_at"])
    _entitlements_changed()
    payment_id = payment.pk
    transaction.on_commit(lambda: emails.payment_failed_send(payment_id=payment_id, next_attempt_at=next_attempt_at))


def _subscription_restart_on_free(*, sub: Subscription, now: datetime, canceled: bool = False) -> Tier:
    """Move ``sub`` (locked by the caller) to the free tier now, with a period starting now, so its
    quota starts afresh; scheduled changes and dunning state are cleared. Returns the free tier."""
    free = _free_tier()
    start, end = period_bounds(now, free.billing_interval, 0)
    sub.tier = free
    sub.status = Subscription.Status.ACTIVE
    sub.pending_tier = None
    sub.cancel_at_period_end = False
    sub.past_due_since = None
    if canceled:
        sub.canceled_at = now
    sub.billing_anchor, sub.current_period_start, sub.current_period_end = now, start, end
    sub.save()
    return free


def _dunning_end(*, sub: Subscription, invoice: Invoice, now: datetime) -> None:
    """The last retry failed: write the invoice off and move the team to the free tier now, with a
    period starting now (its quota starts afresh). Nothing is deleted; the invoice stays on record."""
    invoice.status = Invoice.Status.UNCOLLECTIBLE
    invoice.next_attempt_at = None
    invoice.save(update_fields=["status", "next_attempt_at"])
    old = sub.tier
    free = _subscription_restart_on_free(sub=sub, now=now)
    _audit(
        team_id=sub.team_id,
        action=AuditEntry.Action.DOWNGRADED_AFTER_DUNNING,
        description=f"{old.name} -> {free.name}: {invoice.number} unpaid after {invoice.attempt_count} attempts.",
        now=now,
        from_tier=old.slug,
        to_tier=free.slug,
        invoice_id=invoice.pk,
    )
    _entitlements_changed()
    invoice_id, tier_name = invoice.pk, free.name
    transaction.on_commit(lambda: emails.downgraded_send(invoice_id=invoice_id, tier_name=tier_name, downgraded_at=now))


def _invoice_settle_without_charge(*, invoice_id: int, now: datetime) -> None:
    """An open invoice with nothing to charge (a zero proration) is paid as it stands."""
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
        if invoice.status == Invoice.Status.OPEN and invoice.total_cents <= 0:
            _invoice_paid_effects(invoice=invoice, now=now)


def _dunning_sweep(*, now: datetime) -> int:
    """End dunning for open renewal invoices that are out of attempts: normally the last failure ends
    it at once, but TIERLAB_DUNNING_RETRY_DAYS may have been shortened meanwhile (a retry still
    scheduled, or none, for an invoice that has had all the attempts the new schedule allows)."""
    exhausted = (
        Invoice.objects.filter(
            Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now),
            status=Invoice.Status.OPEN,
            kind=Invoice.Kind.RENEWAL,
            attempt_count__gte=1 + len(settings.TIERLAB_DUNNING_RETRY_DAYS),
        )
        .exclude(Exists(Payment.objects.filter(invoice=OuterRef("pk"), status=Payment.Status.PENDING)))
        .values_list("pk", flat=True)
    )
    ended = 0
    for invoice_id in list(exhausted):
        with transaction.atomic():
            invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
            if invoice.status != Invoice.Status.OPEN or invoice.payments.filter(status=Payment.Status.PENDING).exists():
                continue
            _dunning_end(sub=_lock_subscription(invoice.subscription_id), invoice=invoice, now=now)
            ended += 1
    return ended


def billing_run(*, now: datetime | None = None, charge_budget_seconds: float | None = None) -> BillingRunResult:
    """One pass of the engine (beat runs it every minute; `manage.py run_billing --now ISO` runs one):
    close every period that ended (invoice + advance, applying scheduled changes), charge the invoices
    that are due (first attempts and dunning retries), and end dunning for those out of retries.
    Safe to run twice at once and after a crash.

    Charging stops early when Stripe is unreachable (PROVIDER_DOWN_AFTER failures in a row) or after
    ``charge_budget_seconds`` (the Celery task's time limit): the rest is due still and the next pass
    charges it. Per-invoice failures are reported in ``errors``; they never undo the local part."""
    now = _now(now)
    result = BillingRunResult()
    closed = billing_periods_close(now=now)
    result.periods_closed = closed.periods_closed
    result.invoices_created = closed.invoices_created
    result.changes_applied = closed.changes_applied

    deadline = time.monotonic() + charge_budget_seconds if charge_budget_seconds else None
    pending = Payment.objects.filter(invoice=OuterRef("pk"), status=Payment.Status.PENDING)
    due = list(
        Invoice.objects.filter(status=Invoice.Status.OPEN)
        .filter(Q(next_attempt_at__lte=now) | Exists(pending))
        .order_by("id")
        .values_list("pk", "number")
    )
    provider_down = 0
    for position, (invoice_id, number) in enumerate(due):
        if deadline is not None and time.monotonic() > deadline:
            result.errors.append(f"time budget spent: {len(due) - position} invoice(s) left for the next pass")
            break
        if provider_down >= PROVIDER_DOWN_AFTER:
            left = len(due) - position
            result.errors.append(f"payment provider unavailable: {left} invoice(s) left for the next pass")
            break
        try:
            payment, charged = _invoice_pay(invoice_id=invoice_id, now=now)
        except gateway.PaymentProviderUnavailable as exc:
            provider_down += 1
            result.payments_attempted += 1
            result.errors.append(f"{number}: {exc.message}")
            continue
        except ApplicationError as exc:
            result.errors.append(f"{number}: {exc.message}")
            continue
        provider_down = 0
        if payment is None:
            continue
        if charged:
            result.payments_attempted += 1
        if payment.status == Payment.Status.SUCCEEDED:
            result.payments_succeeded += 1
        elif payment.status in _FAILED_STATUSES:
            result.payments_failed += 1
            if Invoice.objects.filter(pk=invoice_id, status=Invoice.Status.UNCOLLECTIBLE).exists():
                result.downgraded += 1
    result.downgraded += _dunning_sweep(now=now)
    return result


# --- Refunds and comps ---------------------------------------------------------------------------------


def payment_refund(
    *, payment: Payment, actor: User, reason: str, amount_cents: int | None = None, now: datetime | None = None
) -> Refund:
    """Refund (all or part of) a succeeded payment; written to the audit log.

    The Refund row is written (pending) before Stripe is called, like a payment, and counts against
    what can still be refunded until Stripe answers, so a double click cannot refund twice. If Stripe
    cannot be reached the refund stays pending (its outcome is unknown) and the error is raised: check
    the payment in Stripe before refunding again. ``payment`` is refreshed."""
    now = _now(now)
    if not (reason or "").strip():
        raise BillingError("Say why: a refund needs a reason.", code="reason_required")
    with transaction.atomic():
        locked = Payment.objects.select_for_update(of=("self",)).select_related("invoice").get(pk=payment.pk)
        if locked.status != Payment.Status.SUCCEEDED or not locked.stripe_payment_intent_id:
            raise BillingError("Only a succeeded payment can be refunded.", code="not_refundable")
        committed = locked.refunds.exclude(status="failed").aggregate(total=Sum("amount_cents"))["total"] or 0
        refundable = locked.amount_cents - committed
        amount = refundable if amount_cents is None else amount_cents
        if amount <= 0 or amount > refundable:
            raise BillingError(
                f"At most {money(refundable, locked.currency)} of this payment can be refunded.",
                code="refund_amount_invalid",
            )
        number = locked.refunds.count() + 1
        refund = Refund.objects.create(
            payment=locked,
            idempotency_key=f"payment:{locked.pk}:refund:{number}",
            amount_cents=amount,
            reason=reason[:200],
            status="pending",
            created_by=actor,
            created_at=now,
        )
    try:
        outcome = gateway.refund_create(
            payment_intent_id=locked.stripe_payment_intent_id,
            amount_cents=amount,
            idempotency_key=refund.idempotency_key,
            reason=reason,
        )
    except gateway.PaymentProviderUnavailable:
        raise
    except gateway.PaymentError as exc:
        Refund.objects.filter(pk=refund.pk).update(status="failed")
        _audit(
            team_id=locked.invoice.team_id,
            actor=actor,
            action=AuditEntry.Action.REFUND_FAILED,
            description=f"Refund of {money(amount, locked.currency)} on {locked.invoice.number} failed: {exc.message}",
            now=now,
            payment_id=locked.pk,
            reason=reason,
        )
        raise
    with transaction.atomic():
        refund.stripe_refund_id = outcome.id
        refund.status = outcome.status or "succeeded"
        refund.save(update_fields=["stripe_refund_id", "status"])
        if refund.status != "failed":
            locked = Payment.objects.select_for_update().get(pk=locked.pk)
            locked.amount_refunded_cents += amount
            locked.save(update_fields=["amount_refunded_cents", "updated_at"])
        _audit(
            team_id=payment.invoice.team_id,
            actor=actor,
            action=AuditEntry.Action.REFUND,
            description=f"Refunded {money(amount, payment.currency)} of {payment.invoice.number}: {reason}",
            now=now,
            payment_id=payment.pk,
            refund_id=refund.pk,
            amount_cents=amount,
            reason=reason,
        )
    payment.refresh_from_db()
    return refund


def invoice_comp(*, invoice: Invoice, actor: User, reason: str, now: datetime | None = None) -> Invoice:
    """Operators waive an open invoice (void it, stop dunning, restore the subscription if it was past
    due because of it); written to the audit log.

    Also an uncollectible one (written off by dunning): voided for the record; the tier is not
    restored (the operator moves it back if they mean to). Refused while a charge of it is in flight,
    which might still succeed. ``invoice`` is refreshed."""
    now = _now(now)
    if not (reason or "").strip():
        raise BillingError("Say why: a comp needs a reason.", code="reason_required")
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if locked.status not in (Invoice.Status.OPEN, Invoice.Status.UNCOLLECTIBLE):
            raise BillingError(
                f"Only an open or uncollectible invoice can be comped; {locked.number} is {locked.status}.",
                code="invoice_not_compable",
            )
        if locked.payments.filter(status=Payment.Status.PENDING).exists():
            raise BillingError(
                "A charge of this invoice is in progress; try again in a minute.", code="payment_in_progress"
            )
        was = locked.status
        _invoice_void_locked(invoice=locked, now=now)
        locked.memo = f"Comped: {reason}"[:200]
        locked.save(update_fields=["memo"])
        if was == Invoice.Status.OPEN and locked.kind == Invoice.Kind.RENEWAL:
            _subscription_restore_if_settled(sub=_lock_subscription(locked.subscription_id), invoice=locked)
        _audit(
            team_id=locked.team_id,
            actor=actor,
            action=AuditEntry.Action.INVOICE_COMPED,
            description=f"Invoice {locked.number} ({money(locked.total_cents, locked.currency)}) waived: {reason}",
            now=now,
            invoice_id=locked.pk,
            reason=reason,
        )
    invoice.refresh_from_db()
    return invoice


# --- The billing page ------------------------------------------------------------------------------------

OVERVIEW_INVOICES = 50


def billing_overview(*, team: Team, now: datetime | None = None) -> BillingOverview:
    """For the /billing/ page: subscription, next charge date and amount (fee + estimated overage so
    far), pending change, card on file, invoices.

    Next charge: while dunning, the open invoice's next retry; otherwise the period end, for the fee of
    the tier that applies from then (the scheduled one, free after a cancel) plus the overage of this
    period so far at today's usage. None when nothing will be charged (free, or leaving a tier that
    bills no overage)."""
    now = _now(now)
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
                used = _usage_tokens(team_id=team.pk, start=subscription.current_period_start, end=now)
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
        card_brand=customer.card_brand if customer else "",
        card_last4=customer.card_last4 if customer else "",
        invoices=invoices,
    )
