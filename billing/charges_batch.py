"""Charging many renewal invoices at once: ``invoice_charge``'s work with a few statements per batch
for the common case, for callers that charge thousands in one go (the simulator's billing pass:
simulation/engine.py). Same rules, same rows, same effects as charging them one by one
(billing.payments); only the number of statements differs.

Per batch of due renewal invoices (open, due, not out of retries, something to charge, no attempt
pending, a card on file; the others are left to ``billing_run``'s one-by-one loop, which knows every
other case):
  1. one SELECT of the invoices (FOR UPDATE on PostgreSQL), one of their teams' customers,
  2. one INSERT of their attempts (pending, each with its idempotency key) and one UPDATE counting
     them on the invoices, in a transaction of their own (committed, unless the caller holds one, as
     ``invoice_charge`` commits ``payment_start``'s) before the payment provider is called,
  3. one charge call per attempt (``gateway.payment_intent_create``, the same arguments as
     ``payment_send``); after billing.run.PROVIDER_DOWN_AFTER "unreachable" answers in a row the rest
     are not sent, and stay pending for the one-by-one path to recover after their quiet period,
  4. the succeeded ones settled together: one SELECT locking their invoices again, one of the
     attempts still pending, one UPDATE of those attempts, one of their invoices (paid), one SELECT of
     their subscriptions that are in dunning (normally none: ``subscription_restore_if_settled`` each),
     and a receipt each after the commit, in order. Any other outcome (a decline, 3-D Secure, the
     provider unreachable, an attempt settled meanwhile by a webhook) goes through
     billing.payments' one-by-one path for that attempt, so dunning and its emails are unchanged.
Exactly once: attempts are unique on (invoice, attempt) and on their idempotency key, as always; an
invoice is picked only while it has no pending attempt, under its row lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from billing import emails
from billing import stripe_gateway as gateway
from billing.dunning import subscription_restore_if_settled
from billing.models import BillingCustomer, Invoice, Payment
from billing.payments import (
    FAILURE_PROVIDER_UNAVAILABLE,
    _charge_metadata,
    _intent_outcome_apply,
    _payment_outcome_apply,
)
from billing.run import PROVIDER_DOWN_AFTER
from billing.services import FAILED_STATUSES
from core.sql import column_and_type, execute, param, quoted_table, rows_cte
from tiers.models import Subscription

CHARGE_BATCH = 500  # invoices per batch (its IN lists stay well under SQLite's parameter limit)


@dataclass
class BatchChargeResult:
    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    errors: list[str] | None = None
    provider_down: int = 0  # "unreachable" answers in a row (billing.run.PROVIDER_DOWN_AFTER stops the calls)


def renewals_due(*, now: datetime) -> list[int]:
    """Ids of the renewal invoices a batch charge takes now (see the module docstring), oldest first."""
    pending = Payment.objects.filter(invoice=OuterRef("pk"), status=Payment.Status.PENDING)
    return list(
        Invoice.objects.filter(
            status=Invoice.Status.OPEN,
            kind=Invoice.Kind.RENEWAL,
            next_attempt_at__lte=now,
            total_cents__gt=0,
            attempt_count__lt=1 + len(settings.TIERLAB_DUNNING_RETRY_DAYS),
        )
        .exclude(Exists(pending))
        .order_by("id")
        .values_list("pk", flat=True)
    )


def renewals_charge(*, now: datetime, batch_size: int = CHARGE_BATCH) -> BatchChargeResult:
    """Charge every renewal invoice ``renewals_due`` gives, in batches (module docstring). What it
    leaves (no card on file, an attempt pending) is ``billing_run``'s."""
    result = BatchChargeResult(errors=[])
    due = renewals_due(now=now)
    for first in range(0, len(due), batch_size):
        _batch_charge(invoice_ids=due[first : first + batch_size], now=now, result=result)
    return result


def _batch_charge(*, invoice_ids: Sequence[int], now: datetime, result: BatchChargeResult) -> None:
    max_attempts = 1 + len(settings.TIERLAB_DUNNING_RETRY_DAYS)
    with transaction.atomic():
        pending = Payment.objects.filter(invoice=OuterRef("pk"), status=Payment.Status.PENDING)
        invoices = list(
            Invoice.objects.select_for_update()
            .filter(
                pk__in=invoice_ids,
                status=Invoice.Status.OPEN,
                kind=Invoice.Kind.RENEWAL,
                total_cents__gt=0,
                attempt_count__lt=max_attempts,
            )
            .exclude(Exists(pending))
            .order_by("id")
        )
        customers = {
            c.team_id: c
            for c in BillingCustomer.objects.filter(team_id__in={i.team_id for i in invoices}).exclude(
                default_payment_method_id=""
            )
        }
        invoices = [invoice for invoice in invoices if invoice.team_id in customers]
        if not invoices:
            return
        quiet_until = timezone.now() + gateway.charge_quiet_period()
        payments = Payment.objects.bulk_create(
            [
                Payment(
                    invoice=invoice,
                    attempt=invoice.attempt_count + 1,
                    idempotency_key=f"invoice:{invoice.pk}:attempt:{invoice.attempt_count + 1}",
                    amount_cents=invoice.total_cents,
                    currency=invoice.currency,
                    status=Payment.Status.PENDING,
                    quiet_until=quiet_until,
                    created_at=now,
                )
                for invoice in invoices
            ]
        )
        Invoice.objects.filter(pk__in=[invoice.pk for invoice in invoices]).update(
            attempt_count=F("attempt_count") + 1, next_attempt_at=None
        )
        if any(payment.pk is None for payment in payments):  # a backend that returns no ids on bulk insert
            by_key = dict(
                Payment.objects.filter(idempotency_key__in=[p.idempotency_key for p in payments]).values_list(
                    "idempotency_key", "pk"
                )
            )
            for payment in payments:
                payment.pk = by_key[payment.idempotency_key]
    for invoice, payment in zip(invoices, payments, strict=True):
        invoice.attempt_count = payment.attempt
    # 3. The charges, one call each (what payment_send sends).
    succeeded: list[tuple[Invoice, Payment, gateway.PaymentIntentResult]] = []
    for invoice, payment in zip(invoices, payments, strict=True):
        customer = customers[invoice.team_id]
        if result.provider_down >= PROVIDER_DOWN_AFTER:
            # As billing_run stops charging: the attempt stays pending, never sent; the one-by-one path
            # looks it up after its quiet period (nothing found: sent then, with the same key).
            result.errors.append(f"{invoice.number}: payment provider unavailable, left for the next pass")
            continue
        result.attempted += 1
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
            result.provider_down = 0
        except gateway.PaymentProviderUnavailable as exc:
            Payment.objects.filter(pk=payment.pk, status=Payment.Status.PENDING).update(
                failure_code=FAILURE_PROVIDER_UNAVAILABLE, failure_message=exc.message[:500], updated_at=timezone.now()
            )
            result.errors.append(f"{invoice.number}: {exc.message}")
            result.provider_down += 1
            continue
        except gateway.PaymentRequiresAction as exc:
            result.provider_down = 0
            _one_failed(payment, Payment.Status.REQUIRES_ACTION, exc.code, exc.message, now, result)
            continue
        except (gateway.PaymentDeclined, gateway.PaymentInvalidRequest) as exc:
            result.provider_down = 0
            code = str(exc.extra.get("decline_code") or exc.code)
            _one_failed(payment, Payment.Status.FAILED, code, exc.message, now, result)
            continue
        if intent.status == "succeeded":
            succeeded.append((invoice, payment, intent))
        else:
            settled = _intent_outcome_apply(payment_id=payment.pk, intent=intent, now=now, answered=True)
            result.failed += settled.status in FAILED_STATUSES
    if succeeded:
        _succeeded_apply(succeeded, now=now, result=result)


def _one_failed(
    payment: Payment, status: str, code: str, message: str, now: datetime, result: BatchChargeResult
) -> None:
    _payment_outcome_apply(
        payment_id=payment.pk, status=status, failure_code=code, failure_message=message, now=now, answered=True
    )
    result.failed += 1


def _payments_succeeded(rows: list[tuple[int, str]]) -> None:
    """Pending attempts (id, PaymentIntent id) succeeded, in one statement: what
    ``_payment_outcome_apply`` writes on the attempt for the answer to its only send (the quiet period
    cleared: nothing else of it can be on its way)."""
    table = quoted_table(Payment)
    cte, params = rows_cte(
        "v", [column_and_type(Payment, "id"), column_and_type(Payment, "stripe_payment_intent_id")], rows
    )
    sql = (
        f"WITH {cte} UPDATE {table} SET stripe_payment_intent_id = v.stripe_payment_intent_id, status = %s,"  # noqa: S608 - identifiers from _meta, values as parameters
        " failure_code = '', failure_message = '', quiet_until = NULL, updated_at = %s"
        f" FROM v WHERE {table}.id = v.id AND {table}.status = %s"
    )
    execute(sql, [*params, Payment.Status.SUCCEEDED.value, param(timezone.now()), Payment.Status.PENDING.value])


def _succeeded_apply(
    rows: list[tuple[Invoice, Payment, gateway.PaymentIntentResult]], *, now: datetime, result: BatchChargeResult
) -> None:
    """Settle the succeeded attempts: what ``_payment_outcome_apply`` does for a pending attempt of an
    open renewal whose charge succeeded, for all of them at once (attempts changed meanwhile take the
    one-by-one path)."""
    with transaction.atomic():
        open_ids = set(
            Invoice.objects.select_for_update()
            .filter(pk__in=[invoice.pk for invoice, _, _ in rows], status=Invoice.Status.OPEN)
            .values_list("pk", flat=True)
        )
        still_pending = set(
            Payment.objects.select_for_update()
            .filter(
                pk__in=[payment.pk for _, payment, _ in rows],
                status=Payment.Status.PENDING,
                stripe_payment_intent_id__isnull=True,
            )
            .values_list("pk", flat=True)
        )
        batch, others = [], []
        for row in rows:
            invoice, payment, _ = row
            (batch if invoice.pk in open_ids and payment.pk in still_pending else others).append(row)
        if batch:
            _payments_succeeded([(payment.pk, intent.id) for _, payment, intent in batch])
            paid_ids = [invoice.pk for invoice, _, _ in batch]
            Invoice.objects.filter(pk__in=paid_ids).update(
                status=Invoice.Status.PAID, paid_at=now, next_attempt_at=None
            )
            in_dunning = Subscription.objects.filter(
                Q(past_due_since__isnull=False) | Q(status=Subscription.Status.PAST_DUE),
                pk__in={invoice.subscription_id for invoice, _, _ in batch},
            ).values_list("pk", flat=True)
            by_subscription = {invoice.subscription_id: invoice for invoice, _, _ in batch}
            for sub_id in sorted(in_dunning):
                sub = Subscription.objects.get_locked(sub_id)
                subscription_restore_if_settled(sub=sub, invoice=by_subscription[sub_id])
            payment_ids = [payment.pk for _, payment, _ in batch]

            def receipts() -> None:
                for payment_id in payment_ids:
                    emails.receipt_send(payment_id=payment_id)

            transaction.on_commit(receipts)
            result.succeeded += len(batch)
    for _, payment, intent in others:
        settled = _intent_outcome_apply(payment_id=payment.pk, intent=intent, now=now, answered=True)
        result.succeeded += settled.status == Payment.Status.SUCCEEDED
