"""The period close on PostgreSQL (billing/close_pg.py: one statement per batch, planned by the database)
gives the same rows as the Python planner (billing/close.py), which SQLite runs and which is the
reference: the same database closed both ways, every awkward case in one batch.

Cases: a month-end anchor (Jan 31 -> Feb 28 -> Mar 31), a leap-day anchor on a yearly tier, a period
off the anchor's grid (re-anchored), microseconds in the boundary (the invoice key's isoformat), a
pending downgrade with overage on the old tier, a cancel (to free, several periods behind: caught up
to the current one), a trial ending (its usage never billed), a free subscription (no invoice), usage
just outside the period, and an invoice whose key exists already (advanced, not invoiced again).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, transaction
from django.db.backends.signals import connection_created

from accounts.models import AuditEntry
from billing import close as billing_close
from billing import run
from billing.models import Invoice, InvoiceLine
from core.periods import add_months
from tests.billing.billing_engine_helpers import team_on, usage
from tiers.models import Subscription, Tier

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 1, 6, tzinfo=UTC)


def _period(team, *, anchor: datetime, start: datetime, end: datetime, **fields) -> None:
    Subscription.objects.filter(team=team).update(
        billing_anchor=anchor, current_period_start=start, current_period_end=end, **fields
    )


def _snapshot() -> dict:
    """Everything the close writes, without ids (invoice ids come from a sequence, not rolled back)."""
    invoices = {
        i.billing_key: (
            *(i.team_id, i.subscription_id, i.kind, i.status, i.currency, i.total_cents),
            *(i.period_start, i.period_end, i.issued_at, i.next_attempt_at, i.attempt_count, i.number is not None),
        )
        for i in Invoice.objects.all()
    }
    lines = sorted(
        (
            *(ln.invoice.billing_key, ln.kind, ln.description, ln.tier_id, ln.quantity, ln.unit_amount_cents),
            *(ln.amount_cents, ln.period_start, ln.period_end),
        )
        for ln in InvoiceLine.objects.select_related("invoice")
    )
    subs = sorted(
        Subscription.objects.values_list(
            "id",
            "tier_id",
            "pending_tier_id",
            "cancel_at_period_end",
            "status",
            "billing_anchor",
            "current_period_start",
            "current_period_end",
        )
    )
    audit = sorted(AuditEntry.objects.values_list("team_id", "action", "description", "data", "created_at"))
    # Invoice ids (so numbers) are drawn in subscription order by both paths.
    order = list(Invoice.objects.order_by("id").values_list("subscription_id", flat=True))
    return {"invoices": invoices, "lines": lines, "subscriptions": subs, "audit": audit, "order": order}


def _close(*, set_based: bool, monkeypatch) -> tuple[dict, dict]:
    monkeypatch.setattr(billing_close, "SET_BASED_ON_POSTGRESQL", set_based)
    with transaction.atomic():
        result = run.billing_periods_close(now=NOW)
        again = run.billing_periods_close(now=NOW)
        snapshot = _snapshot()
        transaction.set_rollback(True)  # the other path starts from the same rows
    assert (again.periods_closed, again.invoices_created) == (0, 0)
    return vars(result), snapshot


def _seed(catalog) -> dict:
    """Every awkward case (the module docstring), one team each; returns the teams by case."""
    free, plus, pro = catalog["free"], catalog["plus"], catalog["pro"]
    yearly = Tier(slug="annual", name="Annual", price_cents=120_000, billing_interval="year", sort_order=35)
    yearly.full_clean()
    yearly.save()

    month_end = team_on(plus, anchor=datetime(2026, 1, 31, 9, tzinfo=UTC))
    _period(month_end, anchor=datetime(2026, 1, 31, 9, tzinfo=UTC), start=datetime(2026, 1, 31, 9, tzinfo=UTC),
            end=datetime(2026, 2, 28, 9, tzinfo=UTC))  # fmt: skip
    leap = team_on(yearly, anchor=datetime(2024, 2, 29, 12, tzinfo=UTC))
    _period(leap, anchor=datetime(2024, 2, 29, 12, tzinfo=UTC), start=datetime(2025, 2, 28, 12, tzinfo=UTC),
            end=datetime(2026, 2, 28, 12, tzinfo=UTC))  # fmt: skip
    off_grid = team_on(plus, anchor=datetime(2025, 12, 10, tzinfo=UTC))
    _period(off_grid, anchor=datetime(2025, 12, 10, tzinfo=UTC), start=datetime(2026, 1, 20, tzinfo=UTC),
            end=datetime(2026, 2, 20, 3, tzinfo=UTC))  # fmt: skip
    micro = team_on(pro, anchor=datetime(2026, 1, 15, 8, 30, 5, 123456, tzinfo=UTC))
    m_anchor = datetime(2026, 1, 15, 8, 30, 5, 123456, tzinfo=UTC)
    _period(micro, anchor=m_anchor, start=m_anchor, end=add_months(m_anchor, 1))
    usage(micro, 199_999_999, m_anchor + timedelta(days=3))  # within Pro's 200M: no overage line

    downgrade = team_on(pro, anchor=datetime(2026, 1, 5, tzinfo=UTC))
    _period(downgrade, anchor=datetime(2026, 1, 5, tzinfo=UTC), start=datetime(2026, 1, 5, tzinfo=UTC),
            end=datetime(2026, 2, 5, tzinfo=UTC), pending_tier=plus)  # fmt: skip
    usage(downgrade, 200_000_000, datetime(2026, 1, 6, tzinfo=UTC))
    usage(downgrade, 1_234_567, datetime(2026, 2, 4, 23, tzinfo=UTC))  # 1,234,567 past the 200M included
    usage(downgrade, 9_999_999, datetime(2026, 2, 5, tzinfo=UTC))  # the next period's: not billed here

    cancel = team_on(pro, anchor=datetime(2025, 10, 3, tzinfo=UTC))
    _period(cancel, anchor=datetime(2025, 10, 3, tzinfo=UTC), start=datetime(2025, 10, 3, tzinfo=UTC),
            end=datetime(2025, 11, 3, tzinfo=UTC), cancel_at_period_end=True)  # fmt: skip
    usage(cancel, 250_000_000, datetime(2025, 10, 20, tzinfo=UTC))

    trial = team_on(pro, anchor=datetime(2026, 2, 20, tzinfo=UTC), status=Subscription.Status.TRIALING)
    _period(trial, anchor=datetime(2026, 2, 20, tzinfo=UTC), start=datetime(2026, 2, 6, tzinfo=UTC),
            end=datetime(2026, 2, 20, tzinfo=UTC))  # fmt: skip
    usage(trial, 300_000_000, datetime(2026, 2, 10, tzinfo=UTC))

    free_sub = team_on(free, anchor=datetime(2025, 11, 12, tzinfo=UTC))
    _period(free_sub, anchor=datetime(2025, 11, 12, tzinfo=UTC), start=datetime(2025, 11, 12, tzinfo=UTC),
            end=datetime(2025, 12, 12, tzinfo=UTC))  # fmt: skip

    invoiced = team_on(plus, anchor=datetime(2026, 1, 25, tzinfo=UTC))
    _period(invoiced, anchor=datetime(2026, 1, 25, tzinfo=UTC), start=datetime(2026, 1, 25, tzinfo=UTC),
            end=datetime(2026, 2, 25, tzinfo=UTC))  # fmt: skip
    sub = Subscription.objects.get(team=invoiced)
    Invoice.objects.create(
        billing_key=f"renewal:{sub.pk}:{datetime(2026, 2, 25, tzinfo=UTC).isoformat()}",
        team=invoiced,
        subscription=sub,
        kind=Invoice.Kind.RENEWAL,
        status=Invoice.Status.OPEN,
        currency="usd",
        total_cents=1,
        period_start=datetime(2026, 2, 25, tzinfo=UTC),
        period_end=datetime(2026, 3, 25, tzinfo=UTC),
        issued_at=NOW,
    )
    return {"downgrade": downgrade, "leap": leap, "micro": micro}


def test_the_set_based_close_writes_what_the_python_planner_writes(catalog, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("the set-based close is PostgreSQL's (billing/close_pg.py)")
    teams = _seed(catalog)
    downgrade, leap, micro = teams["downgrade"], teams["leap"], teams["micro"]

    python_result, python_rows = _close(set_based=False, monkeypatch=monkeypatch)
    sql_result, sql_rows = _close(set_based=True, monkeypatch=monkeypatch)

    assert python_result["periods_closed"] == 9 and python_result["invoices_created"] == 7
    assert {k: v for k, v in sql_result.items() if k != "batches"} == {
        k: v for k, v in python_result.items() if k != "batches"
    }
    for part in ("subscriptions", "invoices", "lines", "audit", "order"):
        assert sql_rows[part] == python_rows[part], part
    # A few of the expectations spelled out, so that both paths being wrong the same way shows too.
    lines = {
        (key.split(":")[1], kind): (desc, qty, amount) for key, kind, desc, _, qty, _, amount, *_ in sql_rows["lines"]
    }
    down = str(Subscription.objects.get(team=downgrade).pk)
    assert lines[(down, "overage")] == ("Pro overage: 1,234,567 tokens beyond the 200,000,000 included", 1_234_567, 75)
    assert lines[(down, "fee")][0] == "Plus (Feb 5, 2026 to Mar 5, 2026)"
    leap_sub = Subscription.objects.get(team=leap).pk
    assert lines[(str(leap_sub), "fee")][0] == "Annual (Feb 28, 2026 to Feb 28, 2027)"
    micro_sub = Subscription.objects.get(team=micro).pk
    assert f"renewal:{micro_sub}:2026-02-15T08:30:05.123456+00:00" in sql_rows["invoices"]


@pytest.mark.django_db(transaction=True)
def test_the_set_based_close_on_two_connections_writes_what_the_python_planner_writes(catalog, monkeypatch):
    """TIERLAB_CLOSE_CONCURRENCY: batches of 2 closed by 2 threads, each on its own connection (so the
    rows are committed first: a thread's connection would not see a test transaction's)."""
    if connection.vendor != "postgresql":
        pytest.skip("the set-based close is PostgreSQL's (billing/close_pg.py)")
    _seed(catalog)
    python_result, python_rows = _close(set_based=False, monkeypatch=monkeypatch)

    monkeypatch.setattr(billing_close, "SET_BASED_ON_POSTGRESQL", True)
    opened: list[str] = []

    def on_connection(sender, connection, **kwargs) -> None:
        opened.append(threading.current_thread().name)

    connection_created.connect(on_connection)
    try:
        result = run.billing_periods_close(now=NOW, batch_size=2, concurrency=2)
    finally:
        connection_created.disconnect(on_connection)
    again = run.billing_periods_close(now=NOW, batch_size=2, concurrency=2)
    rows = _snapshot()

    # 9 due subscriptions in batches of 2: 5 ranges, closed on the pool's two connections.
    assert sorted(opened) == ["billing-close-0", "billing-close-1"]
    assert result.batches == 5
    assert {k: v for k, v in vars(result).items() if k != "batches"} == {
        k: v for k, v in python_result.items() if k != "batches"
    }
    assert (again.periods_closed, again.invoices_created, again.changes_applied) == (0, 0, 0)
    for part in ("subscriptions", "invoices", "lines", "audit"):
        assert rows[part] == python_rows[part], part
    # Invoice ids are drawn in subscription order within a batch only (close_pg.periods_close_pg):
    # the same invoices, each numbered from its own id.
    assert sorted(rows["order"]) == sorted(python_rows["order"])
    numbers = dict(Invoice.objects.filter(number__isnull=False).values_list("id", "number"))
    assert len(numbers) == 7 and all(number == f"TL-{pk:08d}" for pk, number in numbers.items())
