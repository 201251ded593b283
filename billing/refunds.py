"""Refunds of payments and comps (waivers) of invoices: operators' actions on money, each written to
the audit log with its reason."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from django.db import transaction
from django.db.models import Sum

from accounts.models import AuditEntry
from billing import stripe_gateway as gateway
from billing.dunning import subscription_restore_if_settled
from billing.models import Invoice, Payment, Refund
from billing.payments import invoice_void_locked
from billing.services import BillingError, audit, billing_now
from core.templatetags.tier_format import money
from tiers.models import Subscription
from tiers.services import operator_reason_check

if TYPE_CHECKING:
    from accounts.models import User


def payment_refund(
    *, payment: Payment, actor: User, reason: str, amount_cents: int | None = None, now: datetime | None = None
) -> Refund:
    """Refund (all or part of) a succeeded payment; written to the audit log.

    The Refund row is written (pending) before Stripe is called, like a payment, and counts against
    what can still be refunded until Stripe answers, so a double click cannot refund twice. If Stripe
    cannot be reached the refund stays pending (its outcome is unknown) and the error is raised: check
    the payment in Stripe before refunding again. ``payment`` is refreshed."""
    now = billing_now(now)
    operator_reason_check(reason, what="a refund")
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
        audit(
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
        audit(
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
    now = billing_now(now)
    operator_reason_check(reason, what="a comp")
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
        invoice_void_locked(invoice=locked, now=now)
        locked.memo = f"Comped: {reason}"[:200]
        locked.save(update_fields=["memo"])
        if was == Invoice.Status.OPEN and locked.kind == Invoice.Kind.RENEWAL:
            subscription_restore_if_settled(sub=Subscription.objects.get_locked(locked.subscription_id), invoice=locked)
        audit(
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
