"""Billing emails: the receipt after a payment, a failed payment, the downgrade after dunning.

Plain text, through the configured email backend, to the team's owners. "Exactly once per event" is
the billing engine's job, not this module's: the engine calls these only on the state transition that
the event is (a Payment going pending -> succeeded under a row lock, and so on), after that transition
has committed (``transaction.on_commit``). A replayed webhook or a second pass finds the transition
done and sends nothing.

Each function takes ids and loads what it shows after the commit, so the email describes the state
that was committed. A failing mail server is logged, not raised: money has moved (or not) already,
and a lost email must not turn into a failed billing pass that is retried (and would send the others
again). Emails are cheap to lose here; charges are not.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings

from accounts.emails import team_email_send, team_owner_emails_many
from billing.models import Invoice, Payment
from core.templatetags.tier_format import money

logger = logging.getLogger(__name__)


def _send(
    *, team_id: int, subject: str, template: str, context: Mapping[str, Any], owners: list[str] | None = None
) -> bool:
    return team_email_send(
        team_id=team_id, subject=subject, template=f"billing/email/{template}.txt", context=context, owners=owners
    )


RECEIPT_BATCH = 500  # payments per query of receipts_send
_receipt_batches: list[list[int]] = []  # open receipts_batched() blocks, innermost last (one thread: the run's)


def receipt_send(*, payment_id: int) -> bool:
    """The receipt for a succeeded payment (inside ``receipts_batched``: queued, sent when it ends)."""
    if _receipt_batches:
        _receipt_batches[-1].append(payment_id)
        return True
    payment = Payment.objects.select_related("invoice__team", "invoice__team__billing_customer").get(pk=payment_id)
    return _receipt_of(payment)


@dataclass
class ReceiptBatch:
    payment_ids: list[int] = field(default_factory=list)  # queued, in order
    sent: int = 0  # receipts sent when the block ended


@contextlib.contextmanager
def receipts_batched() -> Iterator[ReceiptBatch]:
    """Receipts sent by ``receipt_send`` inside the block (on the commits of the block's transactions)
    are sent together when it ends, with a few queries for all of them (``receipts_send``) instead of
    four each: the simulator wraps each simulated day in one. A block left by an exception sends the
    ones queued so far: their payments committed."""
    batch = ReceiptBatch()
    _receipt_batches.append(batch.payment_ids)
    try:
        yield batch
    finally:
        _receipt_batches.remove(batch.payment_ids)
        batch.sent = receipts_send(payment_ids=batch.payment_ids)


def receipts_send(*, payment_ids: list[int]) -> int:
    """``receipt_send`` for many payments (in the order given); returns how many were sent."""
    sent = 0
    for first in range(0, len(payment_ids), RECEIPT_BATCH):
        ids = payment_ids[first : first + RECEIPT_BATCH]
        payments = Payment.objects.select_related("invoice__team", "invoice__team__billing_customer").prefetch_related(
            "invoice__lines"
        )
        by_id = payments.in_bulk(ids)
        owners = team_owner_emails_many(team_ids=sorted({payment.invoice.team_id for payment in by_id.values()}))
        sent += sum(_receipt_of(by_id[pk], owners=owners[by_id[pk].invoice.team_id]) for pk in ids)
    return sent


def _receipt_of(payment: Payment, *, owners: list[str] | None = None) -> bool:
    invoice = payment.invoice
    customer = getattr(invoice.team, "billing_customer", None)
    card = f"{customer.card_brand_name} ending in {customer.card_last4}" if customer and customer.card_last4 else ""
    lines = [
        {"description": line.description, "money": money(line.amount_cents, invoice.currency)}
        for line in invoice.lines.all()
    ]
    return _send(
        team_id=invoice.team_id,
        owners=owners,
        subject=f"Receipt for invoice {invoice.number} ({money(payment.amount_cents, payment.currency)})",
        template="receipt",
        context={
            "invoice": invoice,
            "team_name": invoice.team.name,
            "amount": money(payment.amount_cents, payment.currency),
            "paid_at": invoice.paid_at or payment.updated_at,
            "card": card or "card on file",
            "lines": lines,
        },
    )


def payment_failed_send(*, payment_id: int, next_attempt_at: datetime | None) -> bool:
    """A charge attempt failed; ``next_attempt_at`` is when dunning tries again."""
    payment = Payment.objects.select_related("invoice__team").get(pk=payment_id)
    invoice = payment.invoice
    return _send(
        team_id=invoice.team_id,
        subject=f"Payment failed for invoice {invoice.number}",
        template="payment_failed",
        context={
            "invoice": invoice,
            "team_name": invoice.team.name,
            "amount": money(payment.amount_cents, payment.currency),
            "failure_message": payment.failure_message,
            "next_attempt_at": next_attempt_at,
            "grace_days": settings.TIERLAB_PAST_DUE_GRACE_DAYS,
        },
    )


def downgraded_send(*, invoice_id: int, tier_name: str, downgraded_at: datetime) -> bool:
    """Dunning ran out of retries: the team was moved to ``tier_name``."""
    invoice = Invoice.objects.select_related("team").get(pk=invoice_id)
    return _send(
        team_id=invoice.team_id,
        subject=f"Your team was moved to the {tier_name} tier",
        template="downgraded",
        context={
            "invoice": invoice,
            "team_name": invoice.team.name,
            "amount": money(invoice.total_cents, invoice.currency),
            "attempts": invoice.attempt_count,
            "tier_name": tier_name,
            "downgraded_at": downgraded_at,
        },
    )
