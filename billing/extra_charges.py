"""Money TierLab did not ask for, given back: a PaymentIntent that charged an invoice a second time (or
charged one voided meanwhile) is refunded automatically through Stripe, once, and written to the
audit log.

How one comes about: a charge request the client gave up on (a timeout) may still reach Stripe
later. billing.payments leaves its attempt alone for the quiet period (stripe_gateway.
charge_quiet_period), then looks it up and, only if Stripe has no PaymentIntent for it, sends it
again; a request held on the way for longer than that charges a second time when it lands. On real
Stripe the attempt's idempotency key folds the two into one charge; localstripe ignores idempotency
keys. So whoever sees the second succeeded PaymentIntent (its webhook, or the look-up of an attempt
that was sent more than once) records it here, under the payment's row lock.

Exactly once: the ExtraCharge row is unique on the PaymentIntent and is written, with its audit entry
(``duplicate_charge``, or ``payment_on_closed_invoice`` for a void invoice), in the transaction that
found it; the refund is sent after that commits. A refund whose answer was lost stays pending and is
retried by the billing pass after the quiet period, looking first for a refund Stripe already made
(localstripe would refund twice). A refund Stripe refuses is ``failed`` with a ``refund_failed`` audit
entry: an operator settles it in Stripe's dashboard.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from accounts.models import AuditEntry
from billing import stripe_gateway as gateway
from billing.models import ExtraCharge, Invoice, Payment
from billing.services import audit, billing_now
from core.templatetags.tier_format import money

logger = logging.getLogger(__name__)

REFUND_SWEEP_LIMIT = 100


def extra_charge_record(
    *,
    payment: Payment,
    invoice: Invoice,
    intent_id: str,
    amount_cents: int,
    currency: str,
    reason: ExtraCharge.Reason,
    now: datetime,
) -> ExtraCharge:
    """Record that PaymentIntent ``intent_id`` took money for ``payment`` (of ``invoice``; both locked by
    the caller) that TierLab did not ask for, and refund it after commit. Recording it again (a webhook
    replayed, a look-up after the webhook) changes nothing."""
    extra, created = ExtraCharge.objects.get_or_create(
        stripe_payment_intent_id=intent_id,
        defaults={
            "payment": payment,
            "reason": reason,
            "amount_cents": amount_cents,
            "currency": currency,
            "created_at": now,
        },
    )
    if not created:
        return extra
    amount = money(amount_cents, currency)
    if reason == ExtraCharge.Reason.DUPLICATE:
        action = AuditEntry.Action.DUPLICATE_CHARGE
        description = (
            f"{invoice.number} was charged twice: PaymentIntent {intent_id} ({amount}, attempt {payment.attempt})"
            " is being refunded automatically."
        )
    else:
        action = AuditEntry.Action.PAYMENT_ON_CLOSED_INVOICE
        description = (
            f"Attempt {payment.attempt} of {invoice.number} ({invoice.status}) charged {amount} after the invoice"
            f" was closed: PaymentIntent {intent_id} is being refunded automatically."
        )
    logger.error("payment %s: extra charge %s (%s, %s)", payment.pk, intent_id, reason, amount)
    audit(
        team_id=invoice.team_id,
        action=action,
        description=description,
        now=now,
        payment_id=payment.pk,
        invoice_id=invoice.pk,
        payment_intent=intent_id,
        extra_charge_id=extra.pk,
        amount_cents=amount_cents,
    )
    extra_id = extra.pk
    transaction.on_commit(lambda: _extra_charge_refund_quietly(extra_id, now))
    return extra


def _extra_charge_refund_quietly(extra_charge_id: int, now: datetime) -> None:
    # On commit of whatever found it (a webhook task, a billing pass, a checkout): its own work is done
    # and must not fail because Stripe is slow now; the billing pass retries a pending refund.
    try:
        extra_charge_refund(extra_charge_id=extra_charge_id, now=now)
    except gateway.PaymentError as exc:
        logger.warning("extra charge %s: refund not made now (%s); the billing pass retries it", extra_charge_id, exc)


def extra_charge_refund(*, extra_charge_id: int, now: datetime | None = None) -> ExtraCharge:
    """Refund one recorded extra charge in full, unless done or possibly in flight. Raises
    PaymentProviderUnavailable (the row stays pending) when Stripe cannot be reached."""
    now = billing_now(now)
    wall = timezone.now()
    with transaction.atomic():
        extra = ExtraCharge.objects.select_for_update().get(pk=extra_charge_id)
        if extra.status != ExtraCharge.Status.PENDING or (extra.quiet_until and extra.quiet_until > wall):
            return extra  # settled, or a refund request of it may still be on its way
        sent_before = extra.quiet_until is not None
        extra.quiet_until = wall + gateway.charge_quiet_period()
        extra.save(update_fields=["quiet_until"])
    try:
        refund = None
        if sent_before:
            # An earlier request's answer was lost: it may have refunded already (localstripe would
            # refund a second time, real Stripe would refuse).
            made = gateway.refunds_for_payment_intent(payment_intent_id=extra.stripe_payment_intent_id)
            made = [r for r in made if r.status != "failed"]
            if sum(r.amount_cents for r in made) >= extra.amount_cents:
                refund = made[0]
        if refund is None:
            refund = gateway.refund_create(
                payment_intent_id=extra.stripe_payment_intent_id,
                amount_cents=extra.amount_cents,
                idempotency_key=extra.refund_idempotency_key,
                reason=f"{extra.get_reason_display()} (payment {extra.payment_id})",
            )
    except gateway.PaymentProviderUnavailable:
        raise
    except gateway.PaymentError as exc:
        return _extra_charge_refund_failed(extra=extra, message=exc.message, now=now)
    return _extra_charge_refunded(extra=extra, refund=refund, now=now)


def _extra_charge_refunded(*, extra: ExtraCharge, refund: gateway.RefundResult, now: datetime) -> ExtraCharge:
    with transaction.atomic():
        extra = ExtraCharge.objects.select_for_update().select_related("payment__invoice").get(pk=extra.pk)
        if extra.status != ExtraCharge.Status.PENDING:
            return extra
        extra.status = ExtraCharge.Status.REFUNDED
        extra.stripe_refund_id = refund.id
        extra.refunded_at = now
        extra.quiet_until = None
        extra.save(update_fields=["status", "stripe_refund_id", "refunded_at", "quiet_until"])
        payment = Payment.objects.select_for_update().get(pk=extra.payment_id)
        if payment.stripe_payment_intent_id == extra.stripe_payment_intent_id:
            # The attempt's own charge (of a void invoice) was given back.
            payment.amount_refunded_cents += extra.amount_cents
            payment.save(update_fields=["amount_refunded_cents", "updated_at"])
        invoice = extra.payment.invoice
        audit(
            team_id=invoice.team_id,
            action=AuditEntry.Action.REFUND,
            description=(
                f"Refunded {money(extra.amount_cents, extra.currency)} automatically: PaymentIntent"
                f" {extra.stripe_payment_intent_id} ({extra.get_reason_display().lower()}, {invoice.number})."
            ),
            now=now,
            payment_id=extra.payment_id,
            extra_charge_id=extra.pk,
            stripe_refund_id=refund.id,
            amount_cents=extra.amount_cents,
            reason=extra.reason,
        )
    logger.info("extra charge %s refunded (%s)", extra.stripe_payment_intent_id, refund.id)
    return extra


def _extra_charge_refund_failed(*, extra: ExtraCharge, message: str, now: datetime) -> ExtraCharge:
    with transaction.atomic():
        extra = ExtraCharge.objects.select_for_update().select_related("payment__invoice").get(pk=extra.pk)
        if extra.status != ExtraCharge.Status.PENDING:
            return extra
        extra.status = ExtraCharge.Status.FAILED
        extra.failure_message = message[:500]
        extra.quiet_until = None
        extra.save(update_fields=["status", "failure_message", "quiet_until"])
        invoice = extra.payment.invoice
        audit(
            team_id=invoice.team_id,
            action=AuditEntry.Action.REFUND_FAILED,
            description=(
                f"Automatic refund of PaymentIntent {extra.stripe_payment_intent_id}"
                f" ({money(extra.amount_cents, extra.currency)}, {invoice.number}) failed: {message}"
                " Refund it in Stripe."
            )[:500],
            now=now,
            payment_id=extra.payment_id,
            extra_charge_id=extra.pk,
        )
    logger.error("extra charge %s: refund refused: %s", extra.stripe_payment_intent_id, message)
    return extra


def extra_charges_refund_pending(*, now: datetime | None = None, limit: int = REFUND_SWEEP_LIMIT) -> int:
    """Refund the extra charges still pending whose refund is not in flight (its request failed, or the
    process died before sending it). Returns how many were refunded now; raises
    PaymentProviderUnavailable at the first one Stripe cannot be reached for."""
    wall = timezone.now()
    pending = list(
        ExtraCharge.objects.filter(status=ExtraCharge.Status.PENDING)
        .exclude(quiet_until__gt=wall)
        .order_by("id")
        .values_list("pk", flat=True)[:limit]
    )
    refunded = 0
    for pk in pending:
        if extra_charge_refund(extra_charge_id=pk, now=now).status == ExtraCharge.Status.REFUNDED:
            refunded += 1
    return refunded
