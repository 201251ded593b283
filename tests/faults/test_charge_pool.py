"""Fault: charges made by a bounded pool (billing_run(payment_concurrency=4), issue 17) while Stripe
times out on every other one, and two such passes race over the same invoices.

A delaying TCP proxy (tests/faults/tcp_proxy.py) between the Stripe SDK and a real localstripe holds
every other ``POST /v1/payment_intents`` past the client's read timeout; the held requests reach
localstripe later, after the passes gave up on them. The invariant, read from localstripe's own state:
each invoice is sent once (one idempotency key, attempt 1) and charged exactly once, and the charges
were made side by side (a request sent while another one was still waiting for its answer).

The pool runs threads on PostgreSQL only (billing/run.py), so this runs in CI's integration run.
"""

from __future__ import annotations

import itertools
import threading
from datetime import timedelta

import pytest
from django.db import connection

from billing import run
from billing.models import ExtraCharge, Invoice, Payment
from tests.faults.test_charge_in_flight import (
    CREATE,
    FEB_28,
    READ_TIMEOUT,
    WAIT_SECONDS,
    charges_of,
    renewal_due,
    through_proxy,
    wait_until_quiet,
)
from tests.faults.test_charge_in_flight import team_tier as team_tier  # the fixture

pytestmark = pytest.mark.django_db(transaction=True)

INVOICES = 8
CONCURRENCY = 4
QUIET = 15  # longer than the two racing passes take (each held charge costs the client 2 s at most)


def test_a_pool_of_charges_with_timeouts_charges_each_invoice_exactly_once(settings, stripe_local, team_tier, report):
    if connection.vendor != "postgresql":
        pytest.skip("the charge pool runs threads on PostgreSQL only (billing/run.py)")
    invoices = [renewal_due(team_tier, f"pool{i}@example.com") for i in range(INVOICES)]
    holds = itertools.cycle([True, False])  # every other charge held past the client's timeout
    proxy = through_proxy(
        settings,
        stripe_local,
        hold_seconds=WAIT_SECONDS,
        quiet_seconds=QUIET,
        hold_if=lambda *request: request == CREATE and next(holds),
    )

    with proxy:
        # Two passes, each with a pool of 4, over the same 8 due invoices at once.
        other: list[run.BillingRunResult] = []

        def racing_pass() -> None:
            try:
                other.append(run.billing_run(now=FEB_28, payment_concurrency=CONCURRENCY))
            finally:
                connection.close()  # this thread's own connection

        racer = threading.Thread(target=racing_pass, daemon=True)
        racer.start()
        mine = run.billing_run(now=FEB_28, payment_concurrency=CONCURRENCY)
        racer.join(WAIT_SECONDS)
        assert not racer.is_alive() and other, "the racing pass did not finish"

        sent = proxy.seen(*CREATE)
        keys = [r.headers["idempotency-key"] for r in sent]
        assert len(keys) == len(set(keys)), f"an attempt was sent twice: {sorted(keys)}"
        assert set(keys) <= {f"invoice:{invoice.pk}:attempt:1" for invoice in invoices}
        attempted = mine.payments_attempted + other[0].payments_attempted
        assert attempted == len(sent)
        held = [r for r in sent if r.forwarded_at is None]
        assert held, "no charge was held: the fault did not happen"
        # Side by side: some charge was sent while a held one was still waiting for its answer (one at
        # a time, the next request would wait for the held one's client timeout).
        assert any(
            h.received_at < r.received_at < h.received_at + 0.8 * READ_TIMEOUT for h in held for r in sent if r is not h
        ), "the charges were sent one at a time"
        # Every recorded attempt is attempt 1, one per invoice at most; the held ones are pending.
        rows = list(Payment.objects.filter(invoice__in=invoices).values_list("invoice_id", "attempt"))
        assert len(rows) == len(set(rows)) == len(sent) and {attempt for _, attempt in rows} == {1}
        assert Payment.objects.filter(invoice__in=invoices, status=Payment.Status.PENDING).count() == len(held)

        # The held requests reach localstripe after all; the next pass after the quiet period finds
        # them there (no new request for them) and charges what neither pass got to (if any).
        proxy.hold_if = lambda *request: False
        proxy.release()
        assert proxy.wait_until(lambda: all(r.answered_at for r in proxy.seen(*CREATE)), WAIT_SECONDS)
        wait_until_quiet(list(Payment.objects.filter(invoice__in=invoices, status=Payment.Status.PENDING)))
        settle = run.billing_run(now=FEB_28 + timedelta(minutes=1), payment_concurrency=CONCURRENCY)
        assert settle.errors == []
        again = run.billing_run(now=FEB_28 + timedelta(minutes=2), payment_concurrency=CONCURRENCY)
        assert (again.payments_attempted, again.payments_succeeded, again.errors) == (0, 0, [])

    creates = proxy.seen(*CREATE)
    per_invoice = [charges_of(stripe_local, invoice) for invoice in invoices]
    report(
        f"\ncharge pool of {CONCURRENCY} x 2 racing passes, every other charge held past the {READ_TIMEOUT} s "
        f"timeout: {len(creates)} creates for {INVOICES} invoices ({len(held)} held); "
        f"(succeeded, refunded) per invoice {per_invoice}"
    )
    assert len(creates) == INVOICES
    assert sorted(r.headers["idempotency-key"] for r in creates) == sorted(
        f"invoice:{invoice.pk}:attempt:1" for invoice in invoices
    )
    assert per_invoice == [(1, 0)] * INVOICES  # exactly one charge each, nothing to give back
    for invoice in invoices:
        invoice.refresh_from_db()
        assert invoice.status == Invoice.Status.PAID
        assert list(invoice.payments.values_list("attempt", "status")) == [(1, "succeeded")]
    assert not ExtraCharge.objects.exists()
