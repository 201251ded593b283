"""The Stripe webhook inbox: receive (verify + store once), then process (apply to billing), apart.

Receiving is fast and never does billing work: the event is verified, stored in ``StripeEvent``
(unique on Stripe's event id) and a Celery task is queued after commit. Processing is idempotent and
order-independent: an event already processed is skipped, and the outcome itself is applied by
``billing.payments.payment_outcome_record``, whose contract is "any order, any number of times". Nothing is
ever lost to a failed enqueue: the row is the source of truth, a redelivery of an unprocessed event
queues it again, and ``stripe_events_pending_process`` (a periodic task) sweeps up what is left.

Handled: ``payment_intent.succeeded`` / ``payment_failed`` / ``requires_action`` / ``canceled`` (the
PaymentIntent in the event, as Stripe saw it then). A ``succeeded`` event is also how a second charge
of one attempt (a request that landed after the attempt was sent again) is usually found: it is
refunded automatically (billing.extra_charges). Every other type (``charge.refunded``,
``customer.*``...) is stored for the record and marked processed: refunds are recorded synchronously
by ``billing.refunds.payment_refund`` (and localstripe sends no refund events).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from billing import payments, stripe_gateway
from billing.models import StripeEvent

logger = logging.getLogger(__name__)

PAYMENT_INTENT_EVENT_TYPES = frozenset(
    {
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.requires_action",
        "payment_intent.canceled",
    }
)
# How old an unprocessed event must be before the sweeper takes it (the queued task normally runs
# within seconds; this keeps the sweeper from racing it).
PENDING_GRACE = timedelta(minutes=2)
ERROR_MAX_LENGTH = 2000


def stripe_event_receive(*, payload: bytes, signature_header: str) -> StripeEvent:
    """Verify a webhook delivery and store its event once; queue its processing after commit.

    Raises stripe_gateway.WebhookSignatureInvalid (and stores nothing) when the signature or payload is
    bad. A redelivery of a stored event returns the existing row; it is queued again only if it has not
    been processed yet (processing is idempotent, so a second run is harmless)."""
    verified = stripe_gateway.webhook_event_verify(payload=payload, signature_header=signature_header)
    with transaction.atomic():
        event, created = StripeEvent.objects.get_or_create(
            event_id=verified.id, defaults={"type": verified.type, "payload": verified.payload}
        )
        if created or event.processed_at is None:
            event_pk = event.pk
            # robust: a broker that is down must not turn the delivery into an error after the event
            # is safely stored; the sweeper processes it later.
            transaction.on_commit(lambda: _enqueue_processing(event_pk), robust=True)
    return event


def _enqueue_processing(event_pk: int) -> None:
    from billing.tasks import stripe_event_process_task  # the tasks module imports this one

    stripe_event_process_task.delay(event_pk)


def stripe_event_process(*, event_id: int, now: datetime | None = None) -> None:
    """Apply the stored event ``event_id`` (the StripeEvent's primary key, not Stripe's ``evt_`` id).

    Idempotent: an event already processed is left alone. On success ``processed_at`` is set and any
    earlier ``processing_error`` cleared; on failure the error is recorded in ``processing_error`` and
    re-raised, so the Celery task retries it."""
    now = now or timezone.now()
    try:
        with transaction.atomic():
            # The row lock serialises two workers handling the same event (PostgreSQL; SQLite
            # serialises writers anyway), so the second one sees processed_at and stops.
            event = StripeEvent.objects.select_for_update().filter(pk=event_id).first()
            if event is None:
                logger.warning("stripe event %s: no such row", event_id)
                return
            if event.processed_at is not None:
                return
            _apply(event, now=now)
            event.processed_at = timezone.now()
            event.processing_error = ""
            event.save(update_fields=["processed_at", "processing_error"])
    except Exception as exc:
        # Outside the rolled-back transaction, so the error survives for operators to see.
        StripeEvent.objects.filter(pk=event_id, processed_at__isnull=True).update(
            processing_error=f"{type(exc).__name__}: {exc}"[:ERROR_MAX_LENGTH]
        )
        raise


def _apply(event: StripeEvent, *, now: datetime) -> None:
    if event.type not in PAYMENT_INTENT_EVENT_TYPES:
        return  # stored for the record; nothing to do
    try:
        obj = event.payload["data"]["object"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{event.type} event without data.object") from exc
    intent = stripe_gateway.payment_intent_from_object(obj)
    payment = payments.payment_outcome_record(intent=intent, now=now)
    if payment is None:
        # Not one of our charges (or one whose Payment row is gone): nothing to settle.
        logger.info("stripe event %s (%s): no payment for %s", event.event_id, event.type, intent.id)


def stripe_events_pending_process(*, now: datetime | None = None, limit: int = 100) -> int:
    """Process stored events that are still unprocessed after PENDING_GRACE (their task was lost, or
    exhausted its retries). Returns how many were processed now; failures stay recorded on the row."""
    now = now or timezone.now()
    pending = list(
        StripeEvent.objects.filter(processed_at__isnull=True, received_at__lt=now - PENDING_GRACE)
        .order_by("received_at")
        .values_list("pk", flat=True)[:limit]
    )
    processed = 0
    for pk in pending:
        try:
            stripe_event_process(event_id=pk)
        except Exception:
            logger.exception("stripe event %s: processing failed again", pk)
        else:
            processed += 1
    return processed
