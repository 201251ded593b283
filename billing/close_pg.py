"""Period close on PostgreSQL: one statement per batch, the whole plan computed by the database.

billing/close.py plans every closing in Python (periods, lines, descriptions) and sends the rows back
as JSON: correct on both databases, but about 120 µs per subscription on PostgreSQL, half of it
Python. Here the batch never comes to Python. One statement per batch of CLOSE_BATCH_SIZE:

  due      the batch of due subscriptions, keyset on id, FOR UPDATE SKIP LOCKED (a concurrent pass
           takes other rows instead of waiting for these);
  plan     (MATERIALIZED) per subscription: the scheduled change or trial end, the next period (the
           SQL twin of core/periods.py, built by core.periods.add_months_sql / period_index_sql), the
           ended period's tokens (usage.selectors.tokens_used_sql, by the (team, created_at) index,
           only where the old tier bills overage and the period was not a trial), the overage (the
           SQL twin of tiers/pricing.py), the renewal invoice's key, id (drawn from its sequence) and
           total; an invoice whose key exists already is not planned again;
  adv      the period advance, compare-and-set on the old period end;
  inv      the invoices, ON CONFLICT (billing_key) DO NOTHING;
  lines    their fee and overage lines;
  audit    the scheduled changes and trial ends applied.
Every DML part reads ``plan`` only, joined to real tables by their indexes, never one DML part's
RETURNING to another's (the planner estimates those at one row and picks nested loops over them:
measured at 9.8 s a batch). The statement returns what each part did; a batch whose advance or
invoices did not all happen as planned (impossible while the rows are locked, but then something is
wrong) is rolled back with an error, so an invoice never exists without its period advance, or lines
without their invoice.

Equivalence with billing/close.py is a test (tests/billing/test_close_set_based.py): the same seeded
database closed by each path gives the same rows, month ends, leap years, yearly tiers, re-anchoring,
free catch-up, trials, cancels, downgrades and overage included.
"""

from __future__ import annotations

import itertools
import queue
import threading
from datetime import datetime

from django.db import connection, connections, transaction
from django.utils import timezone

from accounts.models import AuditEntry
from billing.models import Invoice, InvoiceLine
from core.errors import ApplicationError
from core.periods import add_months_sql, iso_utc_sql, period_index_sql
from tiers.models import Subscription, Tier
from tiers.pricing import overage_cents_sql, overage_tokens_sql
from usage.selectors import tokens_used_sql

_STEP = "CASE nt.billing_interval WHEN 'year' THEN 12 ELSE 1 END"
_TOKENS_FORMAT = "'FM9,999,999,999,999,999,999'"  # {:,} in Python: comma groups, no padding


def _span_sql(start: str, end: str) -> str:
    """billing.close.period_span in SQL: "Mar 1, 2026 to Apr 1, 2026" (English month abbreviations:
    to_char's Mon is not localised without the TM prefix)."""
    fmt = "'Mon FMDD, YYYY'"
    return f"to_char({start}, {fmt}) || ' to ' || to_char({end}, {fmt})"


def _statement() -> str:
    from billing.close import _invoice_number_sql

    sub = Subscription._meta.db_table
    tier = Tier._meta.db_table
    inv = Invoice._meta.db_table
    line = InvoiceLine._meta.db_table
    audit = AuditEntry._meta.db_table
    active, trialing = Subscription.Status.ACTIVE.value, Subscription.Status.TRIALING.value
    idx = period_index_sql("d.billing_anchor", _STEP, "d.current_period_end")
    grid_start = add_months_sql("p0.billing_anchor", "p0.idx * p0.step")
    grid_end = add_months_sql("g.billing_anchor", "(g.idx + 1) * g.step")
    now_idx = period_index_sql("p1.anchor", "p1.step", "%(now)s")
    free_catch_up = "(p1.is_free AND p1.end0 <= %(now)s)"
    used = tokens_used_sql(team="p2.team_id", start="p2.old_start", end="p2.old_end")
    over_tokens = overage_tokens_sql(used="p3.used", included="ot.monthly_tokens")
    over_cents = overage_cents_sql(tokens=f"({over_tokens})", cents_per_million="ot.overage_cents_per_million_tokens")
    # ruff: noqa: S608 - table names from _meta, values as parameters
    return f"""
WITH due AS (
  SELECT s.id, s.team_id, s.tier_id, s.pending_tier_id, s.cancel_at_period_end, s.status,
         s.billing_anchor, s.current_period_start, s.current_period_end
  FROM {sub} s
  WHERE s.id > %(last_id)s AND s.id <= %(upto)s AND s.current_period_end <= %(now)s
    AND s.status IN ('{active}', '{trialing}')
  ORDER BY s.id LIMIT %(batch)s FOR UPDATE OF s SKIP LOCKED
),
p0 AS MATERIALIZED (
  -- Each stage is materialised: inlined, its expressions (and the usage subquery) would be evaluated
  -- once per reference, several times a row (measured: 320 ms a batch of 5,000 instead of 40).
  SELECT d.id, d.team_id, d.tier_id AS old_tier_id, d.new_tier_id, d.billing_anchor, d.status,
    d.current_period_start AS old_start, d.current_period_end AS old_end, NOT nt.is_paid AS is_free,
    {_STEP} AS step, {idx} AS idx,
    CASE WHEN d.cancel_at_period_end THEN 'cancel' WHEN d.pending_tier_id IS NOT NULL THEN 'downgrade'
         WHEN d.status = '{trialing}' THEN 'trial_end' ELSE '' END AS change
  FROM (SELECT due.*, CASE WHEN due.cancel_at_period_end THEN %(free_id)s
          ELSE COALESCE(due.pending_tier_id, due.tier_id) END AS new_tier_id FROM due) d
  JOIN {tier} nt ON nt.id = d.new_tier_id
),
p1 AS MATERIALIZED (
  -- The period of the new tier's interval that contains the old end: on the anchor's grid (the usual
  -- case) it starts at the old end; off the grid (the interval changed, a period edited by hand) the
  -- subscription is re-anchored at the old end (billing.close.next_period).
  SELECT g.*, CASE WHEN g.on_grid THEN g.billing_anchor ELSE g.old_end END AS anchor,
    CASE WHEN g.on_grid THEN {grid_end} ELSE {add_months_sql("g.old_end", "g.step")} END AS end0
  FROM (SELECT p0.*, {grid_start} = p0.old_end AS on_grid FROM p0) g
),
p2 AS MATERIALIZED (
  -- Free periods are never invoiced: a free subscription behind by several periods jumps to the
  -- current one. A paid one advances one period per pass (each renewal charged before the next).
  SELECT c.*,
    CASE WHEN c.catch_up THEN {add_months_sql("c.anchor", "c.now_idx * c.step")} ELSE c.old_end END AS start,
    CASE WHEN c.catch_up THEN {add_months_sql("c.anchor", "(c.now_idx + 1) * c.step")} ELSE c.end0 END AS "end",
    c.status = '{trialing}' AS trial_ended,
    CASE WHEN c.status = '{trialing}' THEN '{active}' ELSE c.status END AS new_status
  FROM (SELECT p1.*, {free_catch_up} AS catch_up, CASE WHEN {free_catch_up} THEN {now_idx} END AS now_idx
        FROM p1) c
),
p3 AS MATERIALIZED (
  SELECT p2.*, CASE WHEN ot.overage_policy = '{Tier.OveragePolicy.BILL.value}' AND NOT p2.trial_ended
    THEN {used} END AS used
  FROM p2 JOIN {tier} ot ON ot.id = p2.old_tier_id
),
p4 AS (
  SELECT p3.*, nt.is_paid AS fee, nt.price_cents AS fee_cents,
    CASE WHEN p3.used > 0 AND ot.overage_cents_per_million_tokens > 0 AND ({over_cents}) > 0
      THEN {over_tokens} END AS over_tokens,
    CASE WHEN p3.used > 0 AND ot.overage_cents_per_million_tokens > 0 THEN {over_cents} END AS over_cents,
    CASE WHEN nt.is_paid THEN nt.currency ELSE ot.currency END AS currency,
    'renewal:' || p3.id || ':' || {iso_utc_sql("p3.start")} AS key
  FROM p3 JOIN {tier} nt ON nt.id = p3.new_tier_id JOIN {tier} ot ON ot.id = p3.old_tier_id
),
plan AS MATERIALIZED (
  SELECT p4.*, CASE WHEN p4.fee THEN p4.fee_cents ELSE 0 END + COALESCE(p4.over_cents, 0) AS total,
    CASE WHEN (p4.fee OR p4.over_tokens IS NOT NULL)
      AND NOT EXISTS (SELECT 1 FROM {inv} x WHERE x.billing_key = p4.key)
      THEN nextval(pg_get_serial_sequence('{inv}', 'id')) END AS invoice_id
  FROM p4
  -- Invoice ids (and numbers) in subscription order, as the Python planner draws them, whatever order
  -- the joins above produced: PostgreSQL evaluates nextval() after the sort.
  ORDER BY p4.id
),
adv AS (
  UPDATE {sub} s SET tier_id = plan.new_tier_id, pending_tier_id = NULL, cancel_at_period_end = false,
    billing_anchor = plan.anchor, current_period_start = plan.start, current_period_end = plan."end",
    status = plan.new_status, updated_at = %(wall)s
  FROM plan WHERE s.id = plan.id AND s.current_period_end = plan.old_end
  RETURNING s.id
),
ins AS (
  INSERT INTO {inv} (id, number, billing_key, kind, status, currency, total_cents, period_start, period_end,
    issued_at, next_attempt_at, attempt_count, memo, subscription_id, team_id)
  SELECT plan.invoice_id, {_invoice_number_sql("plan.invoice_id")}, plan.key, '{Invoice.Kind.RENEWAL.value}',
    '{Invoice.Status.OPEN.value}', plan.currency, plan.total,
    CASE WHEN plan.fee THEN plan.start ELSE plan.old_start END,
    CASE WHEN plan.fee THEN plan."end" ELSE plan.old_end END,
    %(now)s, %(now)s, 0, '', plan.id, plan.team_id
  FROM plan WHERE plan.invoice_id IS NOT NULL
  ON CONFLICT (billing_key) DO NOTHING
  RETURNING id
),
lines AS (
  INSERT INTO {line} (invoice_id, kind, description, tier_id, quantity, unit_amount_cents, amount_cents,
    period_start, period_end)
  SELECT plan.invoice_id, '{InvoiceLine.Kind.FEE.value}',
    nt.name || ' (' || {_span_sql("plan.start", 'plan."end"')} || ')',
    nt.id, 1, plan.fee_cents, plan.fee_cents, plan.start, plan."end"
  FROM plan JOIN {tier} nt ON nt.id = plan.new_tier_id WHERE plan.invoice_id IS NOT NULL AND plan.fee
  UNION ALL
  SELECT plan.invoice_id, '{InvoiceLine.Kind.OVERAGE.value}',
    ot.name || ' overage: ' || to_char(plan.over_tokens, {_TOKENS_FORMAT}) || ' tokens beyond the '
      || to_char(ot.monthly_tokens, {_TOKENS_FORMAT}) || ' included',
    ot.id, plan.over_tokens, ot.overage_cents_per_million_tokens, plan.over_cents, plan.old_start, plan.old_end
  FROM plan JOIN {tier} ot ON ot.id = plan.old_tier_id
  WHERE plan.invoice_id IS NOT NULL AND plan.over_tokens IS NOT NULL
  RETURNING 1
),
audits AS (
  INSERT INTO {audit} (action, description, data, created_at, actor_id, team_id)
  SELECT CASE plan.change WHEN 'cancel' THEN '{AuditEntry.Action.CANCEL_APPLIED.value}'
      WHEN 'downgrade' THEN '{AuditEntry.Action.DOWNGRADE_APPLIED.value}'
      ELSE '{AuditEntry.Action.TRIAL_ENDED.value}' END,
    ot.name || ' -> ' || nt.name || ' at the period end.',
    jsonb_build_object('from_tier', ot.slug, 'to_tier', nt.slug, 'at', {iso_utc_sql("plan.old_end")}),
    %(now)s, NULL, plan.team_id
  FROM plan JOIN {tier} ot ON ot.id = plan.old_tier_id JOIN {tier} nt ON nt.id = plan.new_tier_id
  WHERE plan.change <> ''
  RETURNING 1
)
SELECT (SELECT count(*) FROM due), (SELECT max(id) FROM due), (SELECT count(*) FROM adv),
  (SELECT count(*) FROM plan WHERE invoice_id IS NOT NULL), (SELECT count(*) FROM ins),
  (SELECT count(*) FROM lines), (SELECT count(*) FROM audits)
"""


_SQL: str | None = None
# The open end of the last range of ids (bigint's largest value): the statement always has a bound.
_NO_UPPER_BOUND = 2**63 - 1


def _batch_ranges(*, now: datetime, batch_size: int) -> list[tuple[int, int]]:
    """The due subscriptions cut into ranges of ids (after, upto] of ``batch_size`` each (the last one
    open-ended), so that several connections can close them at once without meeting: one statement,
    by the (status, current_period_end) index, reading ids only. No row is locked here: a subscription
    that becomes due or stops being due meanwhile falls in some range all the same, and each range's
    statement takes its rows FOR UPDATE SKIP LOCKED as the sequential close does."""
    sub = Subscription._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT id FROM (SELECT s.id, row_number() OVER (ORDER BY s.id) AS n FROM {sub} s
                WHERE s.current_period_end <= %s AND s.status IN (%s, %s)) t
                WHERE t.n %% %s = 0 ORDER BY t.id""",
            [now, Subscription.Status.ACTIVE.value, Subscription.Status.TRIALING.value, batch_size],
        )
        bounds = [0, *(row[0] for row in cursor.fetchall()), _NO_UPPER_BOUND]
    return list(itertools.pairwise(bounds))


def _close_range(*, after: int, upto: int, params: dict, batch_size: int) -> list[tuple[int, int, int]]:
    """Close the due subscriptions with ids in (after, upto], a batch (and transaction) at a time, on
    this thread's connection. Returns (periods closed, invoices created, changes applied) per batch."""
    done = []
    last_id = after
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            # The period arithmetic works in the session's time zone (core.periods, the SQL twins).
            cursor.execute("SET LOCAL TimeZone = 'UTC'")
            cursor.execute(_SQL, {**params, "last_id": last_id, "upto": upto, "batch": batch_size})
            due, max_id, advanced, planned, invoices, _lines, audits = cursor.fetchone()
            if not due:
                return done
            if advanced != due or invoices != planned:
                # The rows are locked by this statement: this cannot happen unless something else
                # wrote them. Roll the batch back rather than leave an invoice without its advance.
                raise ApplicationError(
                    f"period close: batch after id {last_id} advanced {advanced} of {due} subscriptions and "
                    f"created {invoices} of {planned} invoices; rolled back",
                    code="period_close_inconsistent",
                )
        done.append((advanced, invoices, audits))
        # Fewer rows than asked for: none left in the range that is not another pass's (locked).
        if due < batch_size or max_id >= upto:
            return done
        last_id = max_id


def periods_close_pg(*, now: datetime, free: Tier, batch_size: int, result, concurrency: int = 1) -> None:
    """Close every period that ended by ``now`` (see the module docstring); adds to ``result``.

    ``concurrency`` > 1: the due subscriptions are cut into ranges of ``batch_size`` ids
    (_batch_ranges) closed by that many threads at once, each with its own connection and each batch
    its own transaction, as in the sequential close: one PostgreSQL backend is one core, and the close
    is the database's work. Nothing else changes: each batch locks its rows (SKIP LOCKED), advances
    them compare-and-set and inserts ON CONFLICT DO NOTHING, whichever thread runs it. One thing does:
    invoice ids (so numbers) are drawn in subscription order within a batch, but two batches running at
    once draw from the sequence in turn. Inside a transaction (a thread's connection would not see
    the caller's rows) or with one range, the caller's thread closes the ranges in order."""
    global _SQL  # built once per process: it depends on _meta only
    if _SQL is None:
        _SQL = _statement()
    params = {"now": now, "free_id": free.pk, "wall": timezone.now()}
    if concurrency <= 1 or connection.in_atomic_block:
        ranges = [(0, _NO_UPPER_BOUND)]  # the keyset walk over every due id, a batch at a time
    else:
        ranges = _batch_ranges(now=now, batch_size=batch_size)
    threads = max(1, min(concurrency, len(ranges)))
    done: list[tuple[int, int, int]] = []
    if threads == 1 or connection.in_atomic_block:
        for after, upto in ranges:
            done += _close_range(after=after, upto=upto, params=params, batch_size=batch_size)
    else:
        done = _close_ranges_in_threads(ranges=ranges, threads=threads, params=params, batch_size=batch_size)
    for advanced, invoices, audits in done:
        result.batches += 1
        result.periods_closed += advanced
        result.invoices_created += invoices
        result.changes_applied += audits


def _close_ranges_in_threads(
    *, ranges: list[tuple[int, int]], threads: int, params: dict, batch_size: int
) -> list[tuple[int, int, int]]:
    """``ranges`` closed by ``threads`` threads, each with its own connection (closed when the queue is
    empty, as billing.run's payment pool does). The first error stops the threads from taking more
    ranges and is raised once they are done; the batches committed before it stay (each batch is a
    transaction of its own, as in the sequential close), and the next pass closes the rest."""
    work: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
    for item in ranges:
        work.put(item)
    done: list[tuple[int, int, int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            while not errors:
                try:
                    after, upto = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    batches = _close_range(after=after, upto=upto, params=params, batch_size=batch_size)
                except BaseException as exc:  # reported in the caller's thread
                    with lock:
                        errors.append(exc)
                    return
                with lock:
                    done.extend(batches)
        finally:
            connections.close_all()  # this thread's own connections

    pool = [threading.Thread(target=worker, name=f"billing-close-{i}", daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors:
        raise errors[0]
    return done
