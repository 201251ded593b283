"""Charging invoices, and what a charge's outcome means.

A Payment row (pending) is committed BEFORE Stripe is called, carrying the attempt's idempotency key
and the metadata Stripe stores with the PaymentIntent, so there is never a charge we have no record
of (billing.services explains why). The outcome, from the charge call, a webhook or a later lookup, in
any order and any number of times, is applied by ``payment_outcome_record`` under row locks, and each
effect happens on a transition of the Payment row, so it happens once: a paid checkout invoice applies
its tier change (``checkout_apply``: payments know what a paid checkout means, so billing.checkout,
which starts charges, imports this module and not the other way round); a failed checkout is voided;
a failed renewal is a dunning step (billing.dunning).

Exactly once when a charge's outcome is unknown (Stripe slow or down, a process killed mid-call): an
attempt is sent, then left alone for the quiet period (stripe_gateway.charge_quiet_period: longer
than the client waits, plus the time a proxy may hold a request; wall-clock, ``Payment.quiet_until``),
because until then its request may still reach Stripe. It is settled by its webhook at any time, or
after the quiet period by a look-up by metadata; only when Stripe has no PaymentIntent for it is the
same attempt (same idempotency key and metadata) sent again, with a quiet period of its own. If a
request held for longer still lands after all, the second succeeded PaymentIntent it makes is found
(its webhook, or the look-up of every attempt that was sent more than once, once its last quiet
period is over) and refunded automatically (billing.extra_charges).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import AuditEntry
from billing import emails
from billing import stripe_gateway as gateway
from billing.dunning import dunning_step, subscription_restore_if_settled
from billing.extra_charges import extra_charge_record
from billing.models import BillingCustomer, ExtraCharge, Invoice, InvoiceLine, Payment
from billing.services import CHECKOUT_KINDS, audit, billing_now, entitlements_changed
from tiers.models import Subscription

if TYPE_CHECKING:
    from billing.stripe_gateway import PaymentIntentResult

logger = logging.getLogger(__name__)

# Payment.failure_code of a pending attempt whose call ended in PaymentProviderUnavailable, for the
# record: the call is over, but its request may not be (it is left alone until Payment.quiet_until).
FAILURE_PROVIDER_UNAVAILABLE = "provider_unavailable"
# Settled attempts checked again per pass for a second charge (billing_run; normally none or a few).
RECHECK_LIMIT = 100
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
        # The send follows the commit at once: its quiet period starts now (a margin of a minute).
        quiet_until=timezone.now() + gateway.charge_quiet_period(),
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


def payment_send(
    *,
    payment: Payment,
    invoice: Invoice,
    customer: BillingCustomer | None,
    now: datetime,
    resend: bool = False,
    on_session: bool = False,
) -> Payment:
    """Charge one recorded attempt (its quiet period already started) and apply its outcome.
    PaymentProviderUnavailable is re-raised with the attempt left pending until its quiet period ends.
    ``on_session``: the customer is at the checkout page, which can run 3-D Secure if the charge asks
    for it (the attempt is then ``requires_action`` and its invoice stays open: checkout_payment_confirm).

    The answer to an attempt's only send settles it for good (``quiet_until`` cleared): no other
    request of it exists. After a ``resend`` the earlier request may still land, so the attempt keeps
    its quiet period and is looked up once more when it ends (payments_recheck)."""
    answered = not resend
    if customer is None or not customer.default_payment_method_id:
        return _payment_outcome_apply(
            payment_id=payment.pk,
            status=Payment.Status.FAILED,
            failure_code=FAILURE_NO_PAYMENT_METHOD,
            failure_message="There is no card on file.",
            now=now,
            answered=answered,
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
            # Named only when it differs from the default: the simulator's in-memory processor
            # (simulation/processor.py) stands in for this function with the off-session signature.
            **({"off_session": False} if on_session else {}),
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
            answered=answered,
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
            answered=answered,
        )
    return _intent_outcome_apply(payment_id=payment.pk, intent=intent, now=now, answered=answered)


def _payment_mark_unreachable(
    *, payment: Payment, exc: gateway.PaymentProviderUnavailable, nothing_sent: bool = False
) -> None:
    """The attempt stays pending (did the charge happen? unknown) until its quiet period ends: the call
    is over, but its request may still be on its way. ``nothing_sent``: only a look-up failed, so the
    quiet period a claim started for it is given back (the next pass may look again at once)."""
    fields = {"failure_code": FAILURE_PROVIDER_UNAVAILABLE, "failure_message": exc.message[:500]}
    if nothing_sent:
        fields["quiet_until"] = timezone.now()
    Payment.objects.filter(pk=payment.pk, status=Payment.Status.PENDING).update(**fields, updated_at=timezone.now())


def _payment_in_flight(payment: Payment) -> bool:
    """May a request of this pending attempt still reach Stripe? (Rows from before ``quiet_until``
    existed count their quiet period from their last change.)"""
    until = payment.quiet_until or payment.updated_at + gateway.charge_quiet_period()
    return until > timezone.now()


def _attempt_intents(
    *, payment: Payment, invoice: Invoice, customer: BillingCustomer | None
) -> list[PaymentIntentResult]:
    """Every PaymentIntent Stripe has for this attempt (by the metadata sent with it; oldest first),
    and the one recorded on it if the metadata search missed it."""
    intents: list[PaymentIntentResult] = []
    if customer is not None:
        metadata = _charge_metadata(invoice_id=invoice.pk, attempt=payment.attempt, team_id=invoice.team_id)
        metadata.pop("team_id")  # invoice + attempt identify it; fewer keys to disagree on
        intents = gateway.payment_intents_find(customer_id=customer.stripe_customer_id, metadata=metadata)
    recorded = payment.stripe_payment_intent_id
    if recorded and all(intent.id != recorded for intent in intents):
        intents.append(gateway.payment_intent_retrieve(payment_intent_id=recorded))
    return intents


def _attempt_intents_record(*, payment: Payment, intents: list[PaymentIntentResult], now: datetime) -> Payment:
    """Apply what Stripe has for one attempt: the PaymentIntent that took its money (the recorded one if
    it did, else the first that did; else the recorded one, else the newest) is its outcome; any other
    that took money too is an extra charge, refunded (payment_outcome_record)."""
    recorded = next((i for i in intents if i.id == payment.stripe_payment_intent_id), None)
    succeeded = [i for i in intents if i.succeeded]
    if recorded is not None and recorded.succeeded:
        primary = recorded
    else:
        primary = succeeded[0] if succeeded else recorded or intents[-1]
    logger.info("payment %s: outcome looked up: %s (%s)", payment.pk, primary.id, primary.status)
    result = payment_outcome_record(intent=primary, now=now) or payment
    for intent in succeeded:
        if intent.id != primary.id:
            payment_outcome_record(intent=intent, now=now)
    return result


def _payment_recover(*, payment: Payment, invoice: Invoice, now: datetime) -> tuple[Payment, bool]:
    """Settle a pending attempt whose outcome never arrived and whose quiet period is over (claimed by
    the caller). Returns (payment, charged_now).

    Never charges twice: every PaymentIntent Stripe has for the attempt is looked up first (by the
    metadata sent with it). Found: its outcome is applied. Not found: after the quiet period that means
    the request never reached Stripe, so a renewal sends the SAME attempt again (same idempotency key
    and metadata; a new quiet period); a checkout charge is voided instead, since its customer has gone
    (they were told it was not confirmed and may try again). A request held on the way for longer than
    the quiet period is the one case this cannot see: billing.extra_charges refunds what it charges.
    """
    customer = BillingCustomer.objects.filter(team_id=invoice.team_id).first()
    try:
        intents = _attempt_intents(payment=payment, invoice=invoice, customer=customer)
    except gateway.PaymentProviderUnavailable as exc:
        _payment_mark_unreachable(payment=payment, exc=exc, nothing_sent=True)
        raise
    if intents:
        return _attempt_intents_record(payment=payment, intents=intents, now=now), False
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
    # The look-up took time of its own: the re-send's quiet period starts now, right before it.
    Payment.objects.filter(pk=payment.pk).update(quiet_until=timezone.now() + gateway.charge_quiet_period())
    return payment_send(payment=payment, invoice=invoice, customer=customer, now=now, resend=True), True


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
            # Claim the quiet attempt (under the invoice lock) before looking it up: it now looks in
            # flight to any other pass for a quiet period, so two passes never both find it missing in
            # Stripe and both send it again.
            Payment.objects.filter(pk=pending.pk).update(
                failure_code="", quiet_until=timezone.now() + gateway.charge_quiet_period(), updated_at=timezone.now()
            )
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
    still pending, no new one is made: it is returned as is while it may be in flight (its quiet
    period), else recovered (see _payment_recover). Raises PaymentProviderUnavailable when Stripe cannot be
    reached; the attempt stays pending and the next call completes it. ``invoice`` is refreshed."""
    payment, _ = invoice_charge(invoice_id=invoice.pk, now=billing_now(now))
    invoice.refresh_from_db()
    return payment


def payments_recheck(*, now: datetime, limit: int = RECHECK_LIMIT) -> int:
    """Look up once more each settled attempt whose quiet period has just ended although it was settled
    (it was sent more than once, or settled by a webhook or look-up while a request of it may still
    have been on its way): a second PaymentIntent that took money is refunded. Returns how many were
    checked. Raises PaymentProviderUnavailable (the rest wait for the next pass)."""
    wall = timezone.now()
    due = list(
        Payment.objects.filter(quiet_until__lte=wall)
        .exclude(status=Payment.Status.PENDING)
        .order_by("id")
        .values_list("pk", "quiet_until")[:limit]
    )
    checked = 0
    for payment_id, quiet_until in due:
        claim = timezone.now() + gateway.charge_quiet_period()
        # Compare-and-set: one pass checks it; another one skips it.
        if not Payment.objects.filter(pk=payment_id, quiet_until=quiet_until).update(quiet_until=claim):
            continue
        payment = Payment.objects.select_related("invoice").get(pk=payment_id)
        customer = BillingCustomer.objects.filter(team_id=payment.invoice.team_id).first()
        try:
            intents = _attempt_intents(payment=payment, invoice=payment.invoice, customer=customer)
        except gateway.PaymentProviderUnavailable:
            Payment.objects.filter(pk=payment_id, quiet_until=claim).update(quiet_until=quiet_until)
            raise
        if intents:
            _attempt_intents_record(payment=payment, intents=intents, now=now)
        Payment.objects.filter(pk=payment_id, quiet_until=claim).update(quiet_until=None)
        checked += 1
    return checked


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
    """Apply a PaymentIntent's outcome (from the charge call, a webhook or a look-up, in any order, any
    number of times) to its Payment, invoice and subscription; sends the receipt / payment-failed email
    once.

    None if the PaymentIntent is not one of ours. Success is final: a failure arriving after it (an
    older event) changes nothing; the same outcome twice changes nothing the second time. A second
    PaymentIntent that took money for an attempt that has it already (or for an invoice paid or voided
    meanwhile) is refunded automatically (billing.extra_charges)."""
    payment = _payment_for_intent(intent)
    if payment is None:
        return None
    return _intent_outcome_apply(payment_id=payment.pk, intent=intent, now=billing_now(now))


def _intent_outcome_apply(
    *, payment_id: int, intent: PaymentIntentResult, now: datetime, answered: bool = False
) -> Payment:
    return _payment_outcome_apply(
        payment_id=payment_id,
        status=_INTENT_STATUS.get(intent.status, Payment.Status.PENDING),
        intent=intent,
        failure_code=intent.failure_code,
        failure_message=intent.failure_message,
        now=now,
        answered=answered,
    )


def _payment_outcome_apply(
    *,
    payment_id: int,
    status: str,
    now: datetime,
    intent: PaymentIntentResult | None = None,
    failure_code: str = "",
    failure_message: str = "",
    answered: bool = False,
) -> Payment:
    """The state machine of an attempt, under row locks (invoice, then payment, then subscription, the
    same order as invoice_pay takes them). Every effect (invoice paid, tier change, dunning step,
    email, extra charge refunded) happens on a transition of a row, so it happens once, whoever gets
    here first. ``answered``: the outcome is the answer to the attempt's only send (payment_send)."""
    with transaction.atomic():
        invoice_id = Payment.objects.filter(pk=payment_id).values_list("invoice_id", flat=True).get()
        invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
        payment = Payment.objects.select_for_update().get(pk=payment_id)
        previous = payment.status
        fields = {"updated_at"}
        recorded = payment.stripe_payment_intent_id
        if intent is not None and recorded and intent.id != recorded:
            # A second PaymentIntent for this attempt: a request of it that reached Stripe after the
            # attempt was sent again. One that took no money changes nothing.
            if status != Payment.Status.SUCCEEDED:
                return payment
            if previous == Payment.Status.SUCCEEDED:
                extra_charge_record(
                    payment=payment,
                    invoice=invoice,
                    intent_id=intent.id,
                    amount_cents=intent.amount_cents,
                    currency=intent.currency or payment.currency,
                    reason=ExtraCharge.Reason.DUPLICATE,
                    now=now,
                )
                return payment
            # It took the money the recorded one did not: it is this attempt's outcome.
            payment.stripe_payment_intent_id = intent.id
            fields.add("stripe_payment_intent_id")
        elif intent is not None and not recorded:
            payment.stripe_payment_intent_id = intent.id
            fields.add("stripe_payment_intent_id")
        if answered and status != Payment.Status.PENDING and payment.quiet_until is not None:
            payment.quiet_until = None  # nothing else of this attempt can be on its way
            fields.add("quiet_until")
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
        elif previous == Payment.Status.PENDING or (
            previous == Payment.Status.REQUIRES_ACTION and invoice.kind in CHECKOUT_KINDS
        ):
            # pending -> failed/requires_action/canceled: one dunning step. failed -> canceled (a later
            # event of the same failed attempt) is recorded above and changes nothing else. A checkout
            # waiting for 3-D Secure whose authentication failed is voided now.
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
    # Money arrived for an invoice that another attempt paid (a second charge of one invoice) or that
    # is void (a checkout voided as "never sent" whose charge did go through after all): given back.
    paid = invoice.status == Invoice.Status.PAID
    extra_charge_record(
        payment=payment,
        invoice=invoice,
        intent_id=payment.stripe_payment_intent_id or "",
        amount_cents=payment.amount_cents,
        currency=payment.currency,
        reason=ExtraCharge.Reason.DUPLICATE if paid else ExtraCharge.Reason.INVOICE_CLOSED,
        now=now,
    )


def checkout_abandon(*, invoice_id: int, now: datetime) -> None:
    """Void a checkout invoice still open (its charge waits for an authentication nobody will do); a
    late success of its PaymentIntent is then refunded like any charge of a closed invoice."""
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
        if invoice.status == Invoice.Status.OPEN and invoice.kind in CHECKOUT_KINDS:
            invoice_void_locked(invoice=invoice, now=now)


def invoice_void_locked(*, invoice: Invoice, now: datetime) -> None:
    invoice.status = Invoice.Status.VOID
    invoice.voided_at = now
    invoice.next_attempt_at = None
    invoice.save(update_fields=["status", "voided_at", "next_attempt_at"])


def _payment_failed(*, payment: Payment, invoice: Invoice, now: datetime) -> None:
    if invoice.status != Invoice.Status.OPEN or payment.attempt != invoice.attempt_count:
        return  # settled meanwhile, or a later attempt exists: this old outcome schedules nothing
    if invoice.kind in CHECKOUT_KINDS:
        if payment.status == Payment.Status.REQUIRES_ACTION:
            # The customer is at the checkout page, asked to authenticate (3-D Secure): the invoice waits
            # open for the outcome (billing.checkout.checkout_payment_confirm, or the webhook). Left
            # there, it is voided by the team's next checkout (invoice_charge) or checkout_abandon.
            return
        # The customer is at the checkout and sees the decline; the subscription was never changed.
        invoice_void_locked(invoice=invoice, now=now)
        return
    dunning_step(payment=payment, invoice=invoice, now=now)
