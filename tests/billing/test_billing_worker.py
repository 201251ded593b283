"""Beat -> broker -> worker -> billing pass -> localstripe, with real processes: the scheduled
``billing.tasks.billing_run`` renews a subscription whose period ended and charges it, once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from billing import checkout
from billing.models import Invoice
from core.periods import period_bounds
from tests.billing.billing_engine_helpers import payment_intents_for_invoice
from tests.billing.test_billing_stripe import new_team, paid_tier
from tests.helpers_celery import celery_worker_and_beat

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def billing_run_every_two_seconds() -> None:
    """Like an operator would, in the admin: a PeriodicTask row (the settings' entry runs every minute,
    too slow for a test, and beat rewrites that one from the settings when it starts)."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.update_or_create(
        name="billing-run (test: every 2 s)", defaults={"task": "billing.tasks.billing_run", "interval": every}
    )


def test_beat_and_worker_renew_and_charge_a_subscription_once(catalog, stripe_local, monkeypatch, tmp_path):
    monkeypatch.setenv("STRIPE_API_BASE", stripe_local)  # the worker's settings read it at start
    team = new_team()
    # Subscribed 40 days ago: its first period ended about ten days ago, so the next pass renews it.
    started = timezone.now() - timedelta(days=40)
    checkout.subscription_change(team=team, tier=paid_tier("team", 5_000), payment_method="pm_card_visa", now=started)
    billing_run_every_two_seconds()

    with celery_worker_and_beat(tmp_path / "celery") as celery:
        renewal = celery.wait_for(
            "a paid renewal",
            lambda: Invoice.objects.filter(team=team, kind="renewal", status="paid").first(),
            timeout=90,
        )
        # A few more passes run meanwhile: they find nothing more to do.
        celery.wait_for("two more passes", lambda: _passes_logged(celery) >= 3, timeout=30)

    assert Invoice.objects.filter(team=team, kind="renewal").count() == 1
    assert (renewal.period_start, renewal.period_end) == period_bounds(started, "month", 1)
    assert [pi["amount"] for pi in payment_intents_for_invoice(stripe_local, renewal.pk)] == [5_000]
    assert renewal.payments.get().status == "succeeded"


def _passes_logged(celery) -> int:
    lines = celery.logs().splitlines()
    return sum(1 for line in lines if "billing.tasks.billing_run[" in line and "succeeded" in line)
