"""Invariants PostgreSQL itself enforces, whatever the Python code above it does.

Validation in services (``full_clean``) is the friendly first line; these constraints are what holds
under concurrency and against writes that skip validation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.models import Team
from tiers.models import LanguageModel, Subscription, Tier
from tiers.services import subscription_create, tier_catalog_seed

pytestmark = pytest.mark.integration

THREAD_TIMEOUT = 30


def _in_thread(target: Callable[[], object], outcomes: dict[str, object], name: str) -> threading.Thread:
    """Run ``target`` in a thread with its own database connection (Django's are per thread)."""

    def run() -> None:
        try:
            target()
            outcomes[name] = "created"
        except Exception as exc:
            outcomes[name] = exc
        finally:
            connection.close()  # else the test database cannot be flushed/dropped afterwards

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def _backends_waiting_on_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def _current_subscriptions(team: Team) -> int:
    return Subscription.objects.filter(team=team).exclude(status=Subscription.Status.CANCELED).count()


@pytest.mark.django_db(transaction=True)
def test_only_one_current_subscription_per_team_when_two_transactions_insert_at_once(catalog):
    team = Team.objects.create(name="Race")
    tier = catalog["free"]
    now = timezone.now()

    def insert() -> None:
        # Straight to the table: no Python-side check, only the partial unique index decides.
        Subscription.objects.create(
            team=team,
            tier=tier,
            status=Subscription.Status.ACTIVE,
            billing_anchor=now,
            current_period_start=now,
            current_period_end=now + timedelta(days=30),
        )

    first_inserted, first_may_commit = threading.Event(), threading.Event()

    def first() -> None:
        with transaction.atomic():
            insert()
            first_inserted.set()
            first_may_commit.wait(THREAD_TIMEOUT)

    def second() -> None:
        assert first_inserted.wait(THREAD_TIMEOUT)
        with transaction.atomic():
            insert()

    outcomes: dict[str, object] = {}
    threads = [_in_thread(first, outcomes, "first"), _in_thread(second, outcomes, "second")]
    try:
        # Both transactions are open at once: the second insert waits on the first's uncommitted row.
        deadline = time.monotonic() + THREAD_TIMEOUT
        while _backends_waiting_on_a_lock() == 0:
            assert time.monotonic() < deadline, f"the second insert never waited on the first: {outcomes}"
            assert threads[1].is_alive(), f"the second insert did not wait: {outcomes}"
            time.sleep(0.05)
    finally:
        first_may_commit.set()
        for thread in threads:
            thread.join(THREAD_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)

    assert outcomes["first"] == "created"
    assert isinstance(outcomes["second"], IntegrityError), outcomes
    assert "tiers_subscription_one_current_per_team" in str(outcomes["second"])
    assert _current_subscriptions(team) == 1


@pytest.mark.django_db(transaction=True)
def test_two_racing_subscription_creates_leave_one_current_subscription(catalog):
    # Through the service: both may pass its validation before either commits; then the constraint
    # turns the loser into an error instead of a second current subscription.
    team = Team.objects.create(name="Race via service")
    tier = catalog["free"]
    start_together = threading.Barrier(2, timeout=THREAD_TIMEOUT)

    def attempt() -> None:
        start_together.wait()
        subscription_create(team=team, tier=tier)

    outcomes: dict[str, object] = {}
    threads = [_in_thread(attempt, outcomes, name) for name in ("a", "b")]
    for thread in threads:
        thread.join(THREAD_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)

    assert sorted(o == "created" for o in outcomes.values()) == [False, True], outcomes
    loser = next(o for o in outcomes.values() if o != "created")
    assert isinstance(loser, IntegrityError | ValidationError), loser
    assert _current_subscriptions(team) == 1


def _catalog_snapshot() -> dict[str, list]:
    through = Tier.allowed_models.through
    return {
        "tiers": list(Tier.objects.order_by("slug").values()),
        "models": list(LanguageModel.objects.order_by("model_id").values()),
        "entitlements": sorted(through.objects.values_list("tier__slug", "languagemodel__model_id")),
    }


@pytest.mark.django_db
def test_seeding_the_catalog_twice_changes_nothing():
    first = tier_catalog_seed()
    assert first.created_tiers and first.created_models
    before = _catalog_snapshot()

    second = tier_catalog_seed()

    assert second.created_tiers == [] and second.created_models == []
    # updated_at is part of the snapshot: not even a no-op save happened.
    assert _catalog_snapshot() == before


@pytest.mark.django_db
def test_seeding_again_keeps_an_operators_edit():
    tier_catalog_seed()
    paid = Tier.objects.filter(is_paid=True).order_by("sort_order").first()
    Tier.objects.filter(pk=paid.pk).update(price_cents=paid.price_cents + 123)

    tier_catalog_seed()

    assert Tier.objects.get(pk=paid.pk).price_cents == paid.price_cents + 123


VALID_PAID = {"is_paid": True, "price_cents": 1_000, "overage_policy": "block"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "constraints"),
    [
        # Two constraints forbid it; PostgreSQL reports the first by name (price_cents >= 0 is the column's).
        pytest.param(
            {**VALID_PAID, "price_cents": -100},
            ("tiers_tier_paid_iff_priced", "tiers_tier_price_cents_check"),
            id="negative-price",
        ),
        pytest.param({**VALID_PAID, "price_cents": 0}, "tiers_tier_paid_iff_priced", id="paid-without-price"),
        pytest.param({"is_paid": False, "price_cents": 500}, "tiers_tier_paid_iff_priced", id="free-with-price"),
        pytest.param(
            {**VALID_PAID, "overage_policy": "bill", "overage_cents_per_million_tokens": None},
            "tiers_tier_overage_priced",
            id="overage-billed-without-price",
        ),
        pytest.param(
            {"is_paid": False, "price_cents": 0, "overage_policy": "bill", "overage_cents_per_million_tokens": 100},
            "tiers_tier_overage_needs_paid",
            id="free-tier-billing-overage",
        ),
    ],
)
def test_tier_check_constraints_reject_direct_writes(fields, constraints):
    with pytest.raises(IntegrityError) as raised, transaction.atomic():
        Tier.objects.create(slug="broken", name="Broken", **fields)

    constraints = (constraints,) if isinstance(constraints, str) else constraints
    assert any(f'"{name}"' in str(raised.value) for name in constraints), raised.value
    assert not Tier.objects.filter(slug="broken").exists()


@pytest.mark.django_db
def test_tier_check_constraints_accept_consistent_rows():
    Tier.objects.create(slug="paid", name="Paid", **VALID_PAID)
    Tier.objects.create(slug="free-ok", name="Free", is_paid=False, price_cents=0)
    Tier.objects.create(
        slug="metered",
        name="Metered",
        **{**VALID_PAID, "overage_policy": "bill", "overage_cents_per_million_tokens": 50, "monthly_tokens": 10**6},
    )

    assert Tier.objects.filter(slug__in=["paid", "free-ok", "metered"]).count() == 3
