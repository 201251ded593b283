"""One pass of the billing engine: close the periods that ended (renewal invoices, scheduled changes
applied), charge the invoices that are due (first attempts and dunning retries), end dunning for those
out of retries. Beat runs it every minute (billing.tasks); `manage.py run_billing` runs one."""

from __future__ import annotations

import time
from datetime import datetime

from django.db.models import Exists, OuterRef, Q

from billing import close as billing_close
from billing import stripe_gateway as gateway
from billing.close import CLOSE_BATCH_SIZE, PeriodCloseResult
from billing.dunning import dunning_sweep
from billing.extra_charges import extra_charges_refund_pending
from billing.models import Invoice, Payment
from billing.payments import invoice_charge, payments_recheck
from billing.services import FAILED_STATUSES, BillingRunResult, billing_now, free_tier
from core.errors import ApplicationError
from tiers.selectors import entitlements_cache_clear

# After this many consecutive "Stripe unreachable" answers a pass stops charging: the rest would time
# out one by one too. The next pass (a minute later) starts over.
PROVIDER_DOWN_AFTER = 3


def billing_periods_close(*, now: datetime | None = None, batch_size: int = CLOSE_BATCH_SIZE) -> PeriodCloseResult:
    """The local part of a pass: close every period that ended by ``now`` (invoice + advance, applying
    scheduled changes and ending trials). No Stripe call; the invoices it issues are due at once.
    Set-based, a fixed number of statements per batch of ``batch_size`` (billing/close.py).

    Past-due subscriptions are left alone: they do not renew until their open invoice is paid (or comped)
    or dunning ends (then they move to free, with a new period). Suspended ones are not billed.
    Each subscription is visited at most once per pass, so a paid subscription that is several periods
    behind catches up one period per pass, each renewal charged before the next is issued.
    """
    result = billing_close.periods_close(now=billing_now(now), free=free_tier(), batch_size=batch_size)
    if result.periods_closed:
        entitlements_cache_clear()
    return result


def billing_run(*, now: datetime | None = None, charge_budget_seconds: float | None = None) -> BillingRunResult:
    """One pass of the engine (beat runs it every minute; `manage.py run_billing --now ISO` runs one):
    close every period that ended (invoice + advance, applying scheduled changes), charge the invoices
    that are due (first attempts and dunning retries; an attempt whose request may still be in flight
    is left alone), check attempts sent more than once for a second charge and refund it, and end
    dunning for those out of retries.
    Safe to run twice at once and after a crash.

    Charging stops early when Stripe is unreachable (PROVIDER_DOWN_AFTER failures in a row) or after
    ``charge_budget_seconds`` (the Celery task's time limit): the rest is due still and the next pass
    charges it. Per-invoice failures are reported in ``errors``; they never undo the local part."""
    now = billing_now(now)
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
            payment, charged = invoice_charge(invoice_id=invoice_id, now=now)
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
        elif payment.status in FAILED_STATUSES:
            result.payments_failed += 1
            if Invoice.objects.filter(pk=invoice_id, status=Invoice.Status.UNCOLLECTIBLE).exists():
                result.downgraded += 1
    if provider_down < PROVIDER_DOWN_AFTER:
        # Charges sent more than once, once quiet: a late second charge is found and refunded; and
        # refunds of extra charges whose answer was lost.
        try:
            payments_recheck(now=now)
            extra_charges_refund_pending(now=now)
        except gateway.PaymentProviderUnavailable as exc:
            result.errors.append(f"checking earlier charges: {exc.message}")
    result.downgraded += dunning_sweep(now=now)
    return result
