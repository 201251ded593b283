"""Issue 17's fewer indexes and checks for the period close to write (billing and tiers migrations
0003_close_fewer_indexes): what PostgreSQL has after them, and that they go back and forth."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("billing", "0002_payment_quiet_until_extra_charge"), ("tiers", "0002_tier_includes_api_access")]
AFTER = [("billing", "0003_close_fewer_indexes"), ("tiers", "0003_close_fewer_indexes")]


def _schema() -> dict:
    """Per table: the indexes as (columns, unique, partial, pattern-ops) and the foreign keys' columns."""
    found = {}
    with connection.cursor() as cursor:
        for table in ("billing_invoice", "billing_invoiceline", "tiers_subscription"):
            cursor.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s ORDER BY indexdef", [table])
            defs = [row[0].split(" USING btree ", 1)[1] for row in cursor.fetchall()]
            foreign = sorted(
                tuple(c["columns"])
                for c in connection.introspection.get_constraints(cursor, table).values()
                if c["foreign_key"]
            )
            found[table] = {"indexes": sorted(defs), "foreign_keys": foreign}
    return found


def test_the_close_writes_fewer_indexes_and_the_migrations_go_back_and_forth():
    if connection.vendor != "postgresql":
        pytest.skip("the _like indexes and the partial index are PostgreSQL's")
    after = _schema()
    invoice, line, sub = after["billing_invoice"], after["billing_invoiceline"], after["tiers_subscription"]
    assert not any("varchar_pattern_ops" in d for d in invoice["indexes"])
    assert "(team_id)" not in invoice["indexes"] and "(team_id, issued_at DESC)" in invoice["indexes"]
    assert "(billing_key)" in invoice["indexes"] and "(number)" in invoice["indexes"]  # the unique ones
    assert line["indexes"] == ["(id)", "(invoice_id)"] and line["foreign_keys"] == [("invoice_id",)]
    assert "(pending_tier_id) WHERE (pending_tier_id IS NOT NULL)" in sub["indexes"]
    assert "(pending_tier_id)" not in sub["indexes"]
    assert ("pending_tier_id",) in sub["foreign_keys"] and len(sub["foreign_keys"]) == 3

    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    before = _schema()
    assert "(billing_key varchar_pattern_ops)" in before["billing_invoice"]["indexes"]
    assert "(number varchar_pattern_ops)" in before["billing_invoice"]["indexes"]
    assert "(team_id)" in before["billing_invoice"]["indexes"]
    assert before["billing_invoiceline"]["foreign_keys"] == [("invoice_id",), ("tier_id",)]
    assert "(pending_tier_id)" in before["tiers_subscription"]["indexes"]

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    assert _schema() == after
    # Back to the latest state, not only to AFTER: the later migrations (tiers 0004's invalidation
    # triggers) must be there for the tests that run after this one.
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    executor = MigrationExecutor(connection)
    assert not executor.migration_plan(executor.loader.graph.leaf_nodes())
