"""One pass of the billing engine: close the periods that ended (renewal invoices, scheduled changes
applied), charge the invoices that are due (first attempts and dunning retries), end dunning for those
out of retries. Beat runs it every minute (billing.tasks); `manage.py run_billing` runs one."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, connections
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

logger = logging.getLogger(__name__)


def billing_periods_close(
    *, now: datetime | None = None, batch_size: int = CLOSE_BATCH_SIZE, concurrency: int = 1
) -> PeriodCloseResult:
    """The local part of a pass: close every period that ended by ``now`` (invoice + advance, applying
    scheduled changes and ending trials). No Stripe call; the invoices it issues are due at once.
    Set-based, a fixed number of statements per batch of ``batch_size`` (billing/close.py; on
    PostgreSQL one statement per batch, billing/close_pg.py).

    Past-due subscriptions are left alone: they do not renew until their open invoice is paid (or comped)
    or dunning ends (then they move to free, with a new period). Suspended ones are not billed.
    Each subscription is visited at most once per pass, so a paid subscription that is several periods
    behind catches up one period per pass, each renewal charged before the next is issued.

    ``concurrency``: on PostgreSQL, how many batches are closed at once, each on its own connection
    in a thread of its own (the Celery task and ``run_billing`` pass TIERLAB_CLOSE_CONCURRENCY); 1,
    the default, closes them one after the other in the caller's thread, as it does inside a
    transaction and on SQLite.
    """
    result = billing_close.periods_close(
        now=billing_now(now), free=free_tier(), batch_size=batch_size, concurrency=concurrency
    )
    if result.periods_closed:
        # This process at once, without a query (the trials ended, downgrades and cancels applied); the
        # others through the invalidation feed the triggers wrote (core/invalidation.py).
        entitlements_cache_clear()
    return result


def billing_run(
    *,
    now: datetime | None = None,
    charge_budget_seconds: float | None = None,
    payment_concurrency: int = 1,
    close_concurrency: int = 1,
) -> BillingRunResult:
    """One pass of the engine (beat runs it every minute; `manage.py run_billing --now ISO` runs one):
    close every period that ended (invoice + advance, applying scheduled changes), charge the invoices
    that are due (first attempts and dunning retries; an attempt whose request may still be in flight
    is left alone), check attempts sent more than once for a second charge and refund it, and end
    dunning for those out of retries.
    Safe to run twice at once and after a crash.

    Charging stops early when Stripe is unreachable (PROVIDER_DOWN_AFTER failures in a row) or after
    ``charge_budget_seconds`` (the Celery task's time limit): the rest is due still and the next pass
    charges it. Per-invoice failures are reported in ``errors``; they never undo the local part.

    ``payment_concurrency``: how many invoices are charged at once (a bounded pool of threads, each
    with its own database connection; the Celery task and ``run_billing`` pass the setting
    TIERLAB_PAYMENT_CONCURRENCY). 1, the default, charges one at a time in the caller's thread: what
    the simulator's in-memory processor (not written for threads) and callers inside a transaction
    need. Exactly once holds either way: each invoice is charged by one thread, under its row lock,
    its attempt recorded before Stripe is called (billing.payments). ``close_concurrency``: see
    billing_periods_close."""
    now = billing_now(now)
    result = BillingRunResult()
    closed = billing_periods_close(now=now, concurrency=close_concurrency)
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
    provider_down = _charge_due(due=due, now=now, deadline=deadline, concurrency=payment_concurrency, result=result)
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


@dataclass
class _ChargeOutcome:
    number: str
    attempted: bool = False
    status: str = ""
    downgraded: bool = False
    error: str = ""
    provider_down: bool = False
    skipped: str = ""  # why it was not tried: "budget", "provider"


def _charge_due(
    *, due: list[tuple[int, str]], now: datetime, deadline: float | None, concurrency: int, result: BillingRunResult
) -> int:
    """Charge every (invoice id, number) of ``due``, ``concurrency`` at a time; adds to ``result``.
    Returns the run of "Stripe unreachable" answers it ended on (PROVIDER_DOWN_AFTER or more: stopped).

    The pool runs in threads only on PostgreSQL and outside a transaction: a thread has its own
    connection, which would not see the caller's uncommitted rows, and SQLite serialises the writes
    each charge makes anyway. Each thread closes its connection when the queue is empty."""
    lock = threading.Lock()
    down = [0]  # consecutive "Stripe unreachable" answers, across threads

    def charge(invoice_id: int, number: str) -> _ChargeOutcome:
        outcome = _ChargeOutcome(number=number)
        with lock:
            if deadline is not None and time.monotonic() > deadline:
                outcome.skipped = "budget"
            elif down[0] >= PROVIDER_DOWN_AFTER:
                outcome.skipped = "provider"
        if outcome.skipped:
            return outcome
        try:
            payment, charged = invoice_charge(invoice_id=invoice_id, now=now)
        except gateway.PaymentProviderUnavailable as exc:
            with lock:
                down[0] += 1
            outcome.attempted, outcome.provider_down, outcome.error = True, True, f"{number}: {exc.message}"
            return outcome
        except ApplicationError as exc:
            outcome.error = f"{number}: {exc.message}"
            return outcome
        with lock:
            down[0] = 0
        if payment is None:
            return outcome
        outcome.attempted, outcome.status = charged, payment.status
        if payment.status in FAILED_STATUSES:
            outcome.downgraded = Invoice.objects.filter(pk=invoice_id, status=Invoice.Status.UNCOLLECTIBLE).exists()
        return outcome

    threads = max(1, min(concurrency, len(due)))
    if threads == 1 or connection.vendor != "postgresql" or connection.in_atomic_block:
        outcomes = [charge(invoice_id, number) for invoice_id, number in due]
    else:
        work: queue.SimpleQueue[tuple[int, tuple[int, str]]] = queue.SimpleQueue()
        for position, item in enumerate(due):
            work.put((position, item))
        found: list[_ChargeOutcome | None] = [None] * len(due)

        def worker() -> None:
            try:
                while True:
                    try:
                        position, (invoice_id, number) = work.get_nowait()
                    except queue.Empty:
                        return
                    try:
                        found[position] = charge(invoice_id, number)
                    except Exception as exc:  # a database error, say: reported, the others go on
                        logger.exception("charging invoice %s", number)
                        found[position] = _ChargeOutcome(number=number, error=f"{number}: {exc}")
            finally:
                connections.close_all()  # this thread's own connections

        pool = [threading.Thread(target=worker, name=f"billing-charge-{i}", daemon=True) for i in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        outcomes = [o if o is not None else _ChargeOutcome(number="?", error="not charged") for o in found]

    left = {"budget": 0, "provider": 0}
    for outcome in outcomes:
        if outcome.skipped:
            left[outcome.skipped] += 1
            continue
        if outcome.error:
            result.errors.append(outcome.error)
        if outcome.attempted:
            result.payments_attempted += 1
        if outcome.status == Payment.Status.SUCCEEDED:
            result.payments_succeeded += 1
        elif outcome.status in FAILED_STATUSES:
            result.payments_failed += 1
            result.downgraded += int(outcome.downgraded)
    if left["budget"]:
        result.errors.append(f"time budget spent: {left['budget']} invoice(s) left for the next pass")
    if left["provider"]:
        result.errors.append(f"payment provider unavailable: {left['provider']} invoice(s) left for the next pass")
    return down[0]
