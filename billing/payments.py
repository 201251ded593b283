"""Charging invoices, and what a charge's outcome means.

A Payment row (pending) is committed BEFORE Stripe is called, carrying the attempt's idempotency key
and the metadata Stripe stores with the PaymentIntent, so there is never a charge we have no record
of (billing.services explains why). The outcome, from the charge call, a webhook or a later lookup, in
any order and any number of times, is applied by ``payment_outcome_record`` under row locks, and each
effect happens on a transition of the Payment row, so it happens once: a paid checkout invoice applies
its tier change (``checkout_apply``: payments know what a paid checkout means, so billing.checkout,
which starts charges, imports this module and not the other way round); a failed checkout is voided;
a failed renewal is a dunning step (billing.dunning).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import AuditEntry
from billing import emails
from billing import stripe_gateway as gateway
from billing.dunning import dunning_step, subscription_restore_if_settled
from billing.models import BillingCustomer, Invoice, InvoiceLine, Payment
from billing.services import CHECKOUT_KINDS, audit, billing_now, entitlements_changed
from tiers.models import Subscription

if TYPE_CHECKING:
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
# PaymentIntent status -> Payment status. "processing" (and anything unknown) stays pending until a
# webhook or a later lookup settles it.
_INTENT_STATUS = {
    "succeeded": Payment.Status.SUCCEEDED,
    "requires_payment_method": Payment.Status.FAILED,
    "requires_confirmation": Payment.Status.FAILED,
    "requires_action": Payment.Status.REQUIRES_ACTION,
    "canceled": Payment.Status.CANCELED,
}


def payment_start(*, invoice: Invoice, now: datetime) -> Payment:
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


def payment_send(*, payment: Payment, invoice: Invoice, customer: BillingCustomer | None, now: datetime) -> Payment:
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
    return _intent_outcome_apply(payment_id=payment.pk, intent=intent, now=now)


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
    return payment_send(payment=payment, invoice=invoice, customer=customer, now=now), True


def invoice_charge(*, invoice_id: int, now: datetime) -> tuple[Payment | None, bool]:
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
                invoice_void_locked(invoice=invoice, now=now)
                return None, False
            elif invoice.attempt_count >= 1 + len(settings.TIERLAB_DUNNING_RETRY_DAYS):
                return None, False  # out of retries: dunning ends it (dunning.dunning_sweep, in each billing run)
            else:
                payment = payment_start(invoice=invoice, now=now)
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
        invoice_settle_without_charge(invoice_id=invoice.pk, now=now)
        return None, False
    return payment_send(payment=payment, invoice=invoice, customer=customer, now=now), True


def invoice_pay(*, invoice: Invoice, now: datetime | None = None) -> Payment | None:
    """One charge attempt of an open invoice with the team's default card (exactly once per attempt);
    None if there is nothing to charge (paid, void, zero total).

    The attempt is recorded (pending, committed) before Stripe is called. If an earlier attempt is
    still pending, no new one is made: it is returned as is while it may be in flight (PAYMENT_IN_FLIGHT),
    else recovered (see _payment_recover). Raises PaymentProviderUnavailable when Stripe cannot be
    reached; the attempt stays pending and the next call completes it. ``invoice`` is refreshed."""
    payment, _ = invoice_charge(invoice_id=invoice.pk, now=billing_now(now))
    invoice.refresh_from_db()
    return payment


def invoice_settle_without_charge(*, invoice_id: int, now: datetime) -> None:
    """An open invoice with nothing to charge (a zero proration) is paid as it stands."""
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
        if invoice.status == Invoice.Status.OPEN and invoice.total_cents <= 0:
            _invoice_paid_effects(invoice=invoice, now=now)


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
            audit(
                team_id=payment.invoice.team_id,
                action=AuditEntry.Action.DUPLICATE_CHARGE,
                description=f"PaymentIntent {intent.id} also charged attempt {payment.attempt}: refund one.",
                now=billing_now(now),
                payment_id=payment.pk,
                payment_intent=intent.id,
            )
        return payment
    return _intent_outcome_apply(payment_id=payment.pk, intent=intent, now=billing_now(now))


def _intent_outcome_apply(*, payment_id: int, intent: PaymentIntentResult, now: datetime) -> Payment:
    return _payment_outcome_apply(
        payment_id=payment_id,
        status=_INTENT_STATUS.get(intent.status, Payment.Status.PENDING),
        intent_id=intent.id,
        failure_code=intent.failure_code,
        failure_message=intent.failure_message,
        now=now,
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


def _invoice_paid_effects(*, invoice: Invoice, now: datetime) -> None:
    """Mark the (locked, open) invoice paid and apply what paying it means."""
    was = invoice.status
    invoice.status = Invoice.Status.PAID
    invoice.paid_at = now
    invoice.next_attempt_at = None
    invoice.save(update_fields=["status", "paid_at", "next_attempt_at"])
    sub = Subscription.objects.get_locked(invoice.subscription_id)
    if invoice.kind in CHECKOUT_KINDS:
        checkout_apply(sub=sub, invoice=invoice, now=now)
    elif was == Invoice.Status.OPEN:
        subscription_restore_if_settled(sub=sub, invoice=invoice)
    else:
        # Paid after dunning wrote it off: the team was moved to free then and stays there (they can
        # subscribe again); the money is theirs to keep paid for the period it billed.
        audit(
            team_id=invoice.team_id,
            action=AuditEntry.Action.LATE_PAYMENT,
            description=f"Invoice {invoice.number} was paid after dunning had ended.",
            now=now,
            invoice_id=invoice.pk,
        )


def checkout_apply(*, sub: Subscription, invoice: Invoice, now: datetime) -> None:
    """The tier change a paid checkout invoice was for: the tier of its fee (initial) or charge
    (proration) line. Initial: the first paid period is the invoice's period, anchored at its start."""
    line_kind = InvoiceLine.Kind.FEE if invoice.kind == Invoice.Kind.INITIAL else InvoiceLine.Kind.PRORATION_CHARGE
    line = invoice.lines.select_related("tier").filter(kind=line_kind).first()
    if line is None or line.tier is None:
        logger.error("invoice %s: no %s line to take the tier from", invoice.pk, line_kind)
        return
    old = sub.tier
    sub.tier = line.tier
    sub.scheduled_change_clear()
    if invoice.kind == Invoice.Kind.INITIAL:
        sub.status = Subscription.Status.ACTIVE
        sub.past_due_since = None
        sub.billing_anchor = invoice.period_start
        sub.current_period_start, sub.current_period_end = invoice.period_start, invoice.period_end
    sub.save()
    audit(
        team_id=sub.team_id,
        action=AuditEntry.Action.SUBSCRIBED if invoice.kind == Invoice.Kind.INITIAL else AuditEntry.Action.UPGRADED,
        description=f"{old.name} -> {line.tier.name}, paid with invoice {invoice.number}.",
        now=now,
        from_tier=old.slug,
        to_tier=line.tier.slug,
        invoice_id=invoice.pk,
    )
    entitlements_changed()


def _payment_succeeded(*, payment: Payment, invoice: Invoice, now: datetime) -> None:
    if invoice.status in (Invoice.Status.OPEN, Invoice.Status.UNCOLLECTIBLE):
        _invoice_paid_effects(invoice=invoice, now=now)
        payment_id = payment.pk
        transaction.on_commit(lambda: emails.receipt_send(payment_id=payment_id))
        return
    # Money arrived for an invoice that is paid by another attempt or void (a checkout voided as
    # "never sent" whose charge did go through after all). Keep the record and tell an operator.
    logger.error("payment %s succeeded on invoice %s, which is %s", payment.pk, invoice.pk, invoice.status)
    audit(
        team_id=invoice.team_id,
        action=AuditEntry.Action.PAYMENT_ON_CLOSED_INVOICE,
        description=f"Attempt {payment.attempt} of {invoice.number} ({invoice.status}) succeeded: refund it.",
        now=now,
        payment_id=payment.pk,
        invoice_id=invoice.pk,
    )


def invoice_void_locked(*, invoice: Invoice, now: datetime) -> None:
    invoice.status = Invoice.Status.VOID
    invoice.voided_at = now
    invoice.next_attempt_at = None
    invoice.save(update_fields=["status", "voided_at", "next_attempt_at"])


def _payment_failed(*, payment: Payment, invoice: Invoice, now: datetime) -> None:
    if invoice.status != Invoice.Status.OPEN or payment.attempt != invoice.attempt_count:
        return  # settled meanwhile, or a later attempt exists: this old outcome schedules nothing
    if invoice.kind in CHECKOUT_KINDS:
        # The customer is at the checkout and sees the decline; the subscription was never changed.
        invoice_void_locked(invoice=invoice, now=now)
        return
    dunning_step(payment=payment, invoice=invoice, now=now)
