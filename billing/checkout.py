"""Subscribing and changing tiers: checkout (with proration), cancel and resume, an operator's tier move.

A change that charges (free -> paid, an upgrade) invoices and charges it here, and changes the
subscription only once the charge has succeeded: billing.payments applies a paid checkout invoice
(``payments.checkout_apply``), whoever records the outcome. So a decline leaves the subscription exactly
as it was. Everything else (downgrades, cancels, trials, undo) changes the subscription here, at once or
scheduled for the period end.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.db import transaction

from accounts.models import AuditEntry
from billing import close as billing_close
from billing.checkout_payment import authentication_request, checkout_outcome
from billing.customers import card_on_file, payment_method_update
from billing.models import BillingCustomer, Invoice, InvoiceLine, Payment
from billing.payments import invoice_charge, invoice_settle_without_charge, payment_send, payment_start
from billing.proration import proration_compute
from billing.services import (
    CHECKOUT_KINDS,
    BillingError,
    CheckoutResult,
    audit,
    billing_now,
    billing_role_check,
    entitlements_changed,
    free_tier,
    subscription_restart_on_free,
)
from core.periods import period_bounds
from core.templatetags.tier_format import money
from tiers.models import Subscription, Tier
from tiers.selectors import subscription_current
from tiers.services import InvalidTierChange, operator_reason_check, subscription_create, tier_selectable_check

if TYPE_CHECKING:
    from accounts.models import Team, User


def subscription_change(
    *,
    team: Team,
    tier: Tier,
    payment_method: str | None = None,
    setup_intent: str | None = None,
    in_browser: bool = False,
    actor: User | None = None,
    now: datetime | None = None,
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

    - ``setup_intent``: the pages' card, typed into Stripe.js and confirmed there; Stripe is asked
      whether it is this team's before it is saved (customers.payment_method_update).
    - ``in_browser``: the customer is at the checkout page, so a charge that needs 3-D Secure raises
      PaymentRequiresAction with the PaymentIntent's ``client_secret`` in ``extra`` and its invoice
      stays open until checkout_payment_confirm; otherwise (the API) it is voided like a decline.
    Also: choosing the current tier again while a change is scheduled undoes it ("resumed"); while
    trialing, a dearer tier is switched to at once without a charge (the trial goes on) and the rest
    is scheduled like a downgrade; a past-due subscription can be downgraded but not upgraded.
    """
    now = billing_now(now)
    billing_role_check(team=team, actor=actor)
    tier_selectable_check(tier=tier, public_only=True)
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
        customer = card_on_file(
            team=team, payment_method=payment_method, setup_intent=setup_intent, actor=actor, now=now
        )
        if tier.trial_days and not team_has_trialed(team=team):
            return _trial_start(subscription=subscription, tier=tier, actor=actor, now=now)
        return _checkout_charge(
            kind=Invoice.Kind.INITIAL,
            subscription=subscription,
            tier=tier,
            customer=customer,
            actor=actor,
            now=now,
            in_browser=in_browser,
        )

    if not _is_upgrade(current, tier):
        if payment_method:
            payment_method_update(
                team=team, payment_method=payment_method, setup_intent=setup_intent, actor=actor, now=now
            )
        return _change_schedule(subscription=subscription, tier=tier, actor=actor, now=now)
    if subscription.status == Subscription.Status.PAST_DUE:
        raise InvalidTierChange(
            "Your last payment failed: update your card so the open invoice can be paid before upgrading.",
            code="subscription_past_due",
        )
    if subscription.status == Subscription.Status.TRIALING:
        if payment_method:
            payment_method_update(
                team=team, payment_method=payment_method, setup_intent=setup_intent, actor=actor, now=now
            )
        return _trial_tier_switch(subscription=subscription, tier=tier, actor=actor, now=now)
    customer = card_on_file(team=team, payment_method=payment_method, setup_intent=setup_intent, actor=actor, now=now)
    return _checkout_charge(
        kind=Invoice.Kind.PRORATION,
        subscription=subscription,
        tier=tier,
        customer=customer,
        actor=actor,
        now=now,
        in_browser=in_browser,
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
    now = billing_now(now)
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


def _subscription_current_or_free(*, team: Team, now: datetime) -> Subscription:
    """The team's current subscription; a team without one (every team gets one at sign-up, so only
    data from before that rule) gets a free one first, so there is one row to change in place."""
    subscription = subscription_current(team=team)
    if subscription is None:
        subscription = subscription_create(team=team, tier=free_tier(), now=now)
    return subscription


def _change_schedule(*, subscription: Subscription, tier: Tier, actor: User | None, now: datetime) -> CheckoutResult:
    """A downgrade (to a cheaper tier or to free) at the end of the period the customer paid for."""
    with transaction.atomic():
        sub = Subscription.objects.get_locked(subscription.pk)
        changed = sub.scheduled_change_clear()  # a scheduled cancel gives way to the downgrade
        sub.pending_tier = tier
        sub.save(update_fields=[*changed, "updated_at"])
        audit(
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
        sub = Subscription.objects.get_locked(subscription.pk)
        sub.tier = tier
        sub.status = Subscription.Status.TRIALING
        sub.trial_end = trial_end
        sub.billing_anchor = trial_end
        sub.current_period_start = now
        sub.current_period_end = trial_end
        sub.scheduled_change_clear()
        sub.past_due_since = None
        sub.full_clean()
        sub.save()
        audit(
            team_id=sub.team_id,
            actor=actor,
            action=AuditEntry.Action.TRIAL_STARTED,
            description=f"{tier.name} trial until {trial_end.isoformat()}.",
            now=now,
            tier=tier.slug,
            trial_end=trial_end.isoformat(),
        )
        entitlements_changed()
    return CheckoutResult(subscription=sub, change="trial_started")


def _trial_tier_switch(*, subscription: Subscription, tier: Tier, actor: User | None, now: datetime) -> CheckoutResult:
    """A dearer tier during the trial: switched now, nothing to prorate (nothing was paid); the trial
    keeps its end, and the first charge is the new tier's fee."""
    with transaction.atomic():
        sub = Subscription.objects.get_locked(subscription.pk)
        old = sub.tier
        sub.tier = tier
        sub.save(update_fields=["tier", *sub.scheduled_change_clear(), "updated_at"])
        audit(
            team_id=sub.team_id,
            actor=actor,
            action=AuditEntry.Action.UPGRADED,
            description=f"{old.name} -> {tier.name} during the trial (no charge until it ends).",
            now=now,
            from_tier=old.slug,
            to_tier=tier.slug,
        )
        entitlements_changed()
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
        invoice_charge(invoice_id=invoice_id, now=now)
    if Invoice.objects.filter(pk__in=open_ids, status=Invoice.Status.OPEN).exists():
        raise BillingError(
            "A payment for this subscription is still in progress; try again in a few minutes.",
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
    in_browser: bool = False,
) -> CheckoutResult:
    """Invoice and charge a checkout (``initial``: the first period of a paid tier from now;
    ``proration``: an upgrade for the rest of the current period). The subscription changes when the
    charge succeeds (see payments.payment_outcome_record), never before."""
    _checkout_invoices_settle(subscription_id=subscription.pk, now=now)
    with transaction.atomic():
        sub = Subscription.objects.get_locked(subscription.pk)
        current = sub.tier
        if current.pk != subscription.tier_id:
            raise InvalidTierChange("The subscription changed meanwhile; please try again.", code="concurrent_change")
        # Under the subscription's lock: a second checkout that started before this one committed (a
        # double click) finds this one's invoice here and stops, rather than charging again.
        if Invoice.objects.filter(subscription=sub, kind__in=CHECKOUT_KINDS, status=Invoice.Status.OPEN).exists():
            raise BillingError(
                "A payment for this subscription is still in progress; try again in a few minutes.",
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
        payment = payment_start(invoice=invoice, now=now) if invoice.total_cents > 0 else None
        audit(
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
        invoice_settle_without_charge(invoice_id=invoice.pk, now=now)
    else:
        payment = payment_send(payment=payment, invoice=invoice, customer=customer, now=now, on_session=in_browser)
    if payment is not None and payment.status == Payment.Status.REQUIRES_ACTION and invoice.kind in CHECKOUT_KINDS:
        authentication_request(payment=payment, invoice=invoice, in_browser=in_browser, now=now)
    return checkout_outcome(invoice=invoice, sub=sub, payment=payment)


def subscription_cancel(
    *, team: Team, immediately: bool = False, actor: User | None = None, now: datetime | None = None
) -> CheckoutResult:
    """Cancel the paid tier: at period end (``cancel_at_period_end``; the team then moves to the free
    tier), or now for operators (``immediately``; no refund here; an operator's action in the admin,
    so no role of the team is checked).

    Cancelling is moving to the free tier: the one subscription row of the team stays and changes in
    place (the "one current per team" constraint), so usage, keys and invoices keep their history."""
    now = billing_now(now)
    if not immediately:
        billing_role_check(team=team, actor=actor)
    with transaction.atomic():
        current = subscription_current(team=team)
        if current is None:
            raise InvalidTierChange("There is no subscription to cancel.", code="nothing_to_cancel")
        sub = Subscription.objects.get_locked(current.pk)
        if sub.tier.is_free:
            raise InvalidTierChange("The free tier has nothing to cancel.", code="nothing_to_cancel")
        if immediately:
            old = sub.tier
            free = subscription_restart_on_free(sub=sub, now=now, canceled=True)
            audit(
                team_id=sub.team_id,
                actor=actor,
                action=AuditEntry.Action.CANCELED_NOW,
                description=f"{old.name} canceled now; moved to {free.name}. No refund.",
                now=now,
                from_tier=old.slug,
                to_tier=free.slug,
            )
            return CheckoutResult(subscription=sub, change="canceled")
        if sub.cancel_at_period_end:
            return CheckoutResult(subscription=sub, change="cancel_scheduled")
        changed = sub.scheduled_change_clear()  # a scheduled downgrade gives way to the cancel
        sub.cancel_at_period_end = True
        sub.canceled_at = now
        sub.save(update_fields=[*changed, "updated_at"])
        audit(
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
    now = billing_now(now)
    billing_role_check(team=team, actor=actor)
    with transaction.atomic():
        current = subscription_current(team=team)
        if current is None or (current.pending_tier_id is None and not current.cancel_at_period_end):
            raise InvalidTierChange("There is no scheduled change to undo.", code="nothing_to_resume")
        sub = Subscription.objects.get_locked(current.pk)
        undone = "cancel" if sub.cancel_at_period_end else f"move to {sub.pending_tier.name}"
        sub.save(update_fields=[*sub.scheduled_change_clear(), "updated_at"])
        audit(
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
    now = billing_now(now)
    operator_reason_check(reason, what="a tier change by an operator")
    tier_selectable_check(tier=tier)
    with transaction.atomic():
        sub = Subscription.objects.get_locked(subscription.pk)
        if sub.tier_id == tier.pk and sub.pending_tier_id is None and not sub.cancel_at_period_end:
            raise InvalidTierChange(f"{sub.team} is already on {tier.name}.", extra={"tier": tier.slug})
        old = sub.tier
        sub.tier = tier
        sub.scheduled_change_clear()
        if tier.is_free and sub.status == Subscription.Status.TRIALING:
            sub.status = Subscription.Status.ACTIVE  # nothing left to try out
        sub.save()
        audit(
            team_id=sub.team_id,
            actor=actor,
            action=AuditEntry.Action.TIER_SET_BY_OPERATOR,
            description=f"{old.name} -> {tier.name}: {reason}",
            now=now,
            from_tier=old.slug,
            to_tier=tier.slug,
            reason=reason,
        )
        entitlements_changed()
    subscription.refresh_from_db()
    return sub
