"""Period close, set-based: the local part of a billing pass (no Stripe), called by
``billing.billing_periods_close`` / ``billing.billing_run``.

For every subscription whose period ended: apply the scheduled change (downgrade, cancel = move to
free) or end the trial at the boundary, issue exactly one renewal invoice for (subscription, new
period) with the new period's fee and the ended period's overage, and advance the period.

It must scale to every subscription of a month ending at once (issue 17's goal: 100,000 in under 5 s
on PostgreSQL), so it works on batches with a fixed number of statements each, whatever the batch
size. On PostgreSQL the database plans and writes each batch in ONE statement (billing/close_pg.py);
what follows is the Python planner, which SQLite runs and which the set-based statement is tested
against (tests/billing/test_close_set_based.py):
  1. SELECT the batch of due subscriptions (FOR UPDATE SKIP LOCKED on PostgreSQL: a concurrent pass
     takes other rows instead of waiting for these; SQLite serialises writers anyway),
  2. one aggregate of the ended periods' usage (only when a tier in the batch bills overage),
  3. one UPDATE advancing every period, compare-and-set on the old period end, RETURNING the rows it
     advanced: only those get an invoice, so a concurrent or repeated pass issues nothing,
  4. one INSERT of the invoices, ON CONFLICT (billing_key) DO NOTHING RETURNING the new ones (on
     PostgreSQL numbered in the same statement; SQLite numbers them with one UPDATE more),
  5. one INSERT of their lines,
  6. one INSERT of audit entries, only when scheduled changes or trial ends were applied.
Each batch is one transaction: an invoice never exists without its period advance, or the reverse;
a crash loses (rolls back) at most the batch in progress, which the next pass redoes.

The date arithmetic per subscription (calendar months, clamped at month ends) stays in Python
(core/periods.py), the one place that rule lives; the rows it produces reach the database as one JSON
parameter per statement (see core.sql.rows_cte for why). The usage of the ended periods is usage's to
read (usage.selectors.tokens_used_by_period, one statement per batch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from accounts.models import AuditEntry
from billing.models import Invoice, InvoiceLine
from core.periods import add_months, interval_months, period_containing
from core.sql import column_and_type, datetime_text, execute, insert_rows, param, quoted_table, rows_cte
from tiers.models import Subscription, Tier
from tiers.pricing import overage_line_values
from usage.selectors import tokens_used_by_period

# Subscriptions per batch (and transaction). Rows travel as one JSON parameter, so the size is not
# bounded by SQLite's 32,766 parameters; 5,000 spreads the per-statement overhead (measured on
# PostgreSQL: 100,000 subscriptions took about 0.5 s longer in batches of 2,000) while keeping each
# transaction, and the row locks it holds, to a fraction of a second.
CLOSE_BATCH_SIZE = 5_000
# On PostgreSQL, plan and write each batch in the database (billing/close_pg.py). False runs the Python
# planner there too: the reference the set-based statement is tested against.
SET_BASED_ON_POSTGRESQL = True
# Invoice numbers: "TL-" and the id, zero-padded to 8 digits (longer ids are used whole, not cut).
INVOICE_NUMBER_DIGITS = 8


@dataclass
class PeriodCloseResult:
    """What one period close did."""

    periods_closed: int = 0
    invoices_created: int = 0
    changes_applied: int = 0
    batches: int = 0


# --- Descriptions and amounts (shared with the checkout invoices in billing/checkout.py) ----------


# English month abbreviations, as strftime("%b") gives them in the C locale, without its cost (a tenth
# of the close's Python time at 100,000 invoices) and without depending on the process locale.
_MONTHS = ("", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def period_span(start: datetime, end: datetime) -> str:
    return f"{_MONTHS[start.month]} {start.day}, {start.year} to {_MONTHS[end.month]} {end.day}, {end.year}"


def fee_description(*, tier: Tier, start: datetime, end: datetime) -> str:
    return f"{tier.name} ({period_span(start, end)})"


def overage_description(*, tier: Tier, tokens: int) -> str:
    return f"{tier.name} overage: {tokens:,} tokens beyond the {tier.monthly_tokens:,} included"


def next_period(anchor: datetime, interval: str, boundary: datetime) -> tuple[datetime, datetime, datetime]:
    """(anchor, start, end) of the period that starts at ``boundary``, the end of the previous one.

    Periods are computed from the anchor (core/periods.py), so month-end clamping never drifts. If
    ``boundary`` is not on the anchor's grid for ``interval`` (the tier's interval changed, monthly to
    yearly, or a period was edited by hand), the subscription is re-anchored at the boundary: periods
    stay contiguous, which matters more than keeping the old anchor day.
    """
    start, end = period_containing(anchor, interval, boundary)
    if start != boundary:
        anchor = boundary
        end = add_months(boundary, interval_months(interval))
    return anchor, boundary, end


# --- SQL over row sets (the helpers: core/sql.py) ----------------------------------------------------------


def _periods_advance(advances: Sequence[tuple]) -> set[int]:
    """Advance every period in one statement; returns the ids it advanced.

    Compare-and-set: a row advances only if its period still ends where this pass read it, so a second
    pass (or a retried batch) that read the same row advances nothing and issues nothing."""
    if not advances:
        return set()
    table = quoted_table(Subscription)
    end_type = column_and_type(Subscription, "current_period_end")[1]
    cte, params = rows_cte(
        "v",
        [
            column_and_type(Subscription, "id"),
            ("old_end", end_type),
            column_and_type(Subscription, "tier"),
            column_and_type(Subscription, "billing_anchor"),
            column_and_type(Subscription, "current_period_start"),
            column_and_type(Subscription, "current_period_end"),
            column_and_type(Subscription, "status"),
        ],
        advances,
    )
    # The scheduled change is applied (tier_id), then reset as Subscription.scheduled_change_clear does,
    # except canceled_at: a cancel that took effect keeps its date.
    sql = (
        f"WITH {cte} UPDATE {table} SET tier_id = v.tier_id, pending_tier_id = NULL,"  # noqa: S608 - identifiers from _meta, values as parameters
        " cancel_at_period_end = %s, billing_anchor = v.billing_anchor,"
        " current_period_start = v.current_period_start, current_period_end = v.current_period_end,"
        " status = v.status, updated_at = %s"
        f" FROM v WHERE {table}.id = v.id AND {table}.current_period_end = v.old_end"
        f" RETURNING {table}.id"
    )
    return {int(row[0]) for row in execute(sql, [*params, False, param(timezone.now())])}


def _invoice_number_sql(id_sql: str) -> str:
    """The invoice number of the invoice whose id is ``id_sql``: "TL-" and the id, zero-padded to
    INVOICE_NUMBER_DIGITS (a longer id is used whole, not cut). LPAD is PostgreSQL's, and one Django
    registers on SQLite connections."""
    limit = 10**INVOICE_NUMBER_DIGITS
    as_text = f"CAST({id_sql} AS text)"
    return (
        f"'TL-' || CASE WHEN {id_sql} < {limit} THEN LPAD({as_text}, {INVOICE_NUMBER_DIGITS}, '0') ELSE {as_text} END"
    )


def invoice_numbers_assign(invoice_ids: Iterable[int]) -> None:
    """Number invoices from their ids, set-based (one UPDATE for a batch).

    Unique and increasing, with gaps (PostgreSQL spends a sequence value on every ON CONFLICT DO
    NOTHING, and a rolled-back batch spends its own): TierLab's numbers identify invoices; they are not
    a legally gap-free sequence.
    """
    ids = [(pk,) for pk in invoice_ids]
    if not ids:
        return
    table = quoted_table(Invoice)
    cte, params = rows_cte("n", [column_and_type(Invoice, "id")], ids)
    # The id IN (subquery) form, not UPDATE ... FROM n: SQLite's planner otherwise drives the update
    # from the unique index on `number` (all NULL here) and rescans the batch for every row, which was
    # quadratic (6 s per 5,000 invoices, measured by bench/billing_close.py; 10 ms this way).
    sql = (
        f"WITH {cte} UPDATE {table} SET number = {_invoice_number_sql(f'{table}.id')}"  # noqa: S608 - identifiers from _meta, values as parameters
        f" WHERE {table}.id IN (SELECT id FROM n) AND {table}.number IS NULL"
    )
    execute(sql, params)


def _invoices_insert(rows: Sequence[Sequence[Any]], *, now: datetime) -> list[tuple[int, str]]:
    """Insert renewal invoices (rows of _INVOICE_FIELDS), numbered; returns (id, billing_key) of those
    created, skipping any whose billing_key exists.

    On PostgreSQL the id is drawn from the table's sequence in the INSERT itself, so the number is
    written with the row (an UPDATE afterwards would write every row twice, measured at 12% of the
    whole close). SQLite has no sequences to draw from: the rows are numbered by an UPDATE."""
    constants = {
        "kind": Invoice.Kind.RENEWAL.value,
        "status": Invoice.Status.OPEN.value,
        "issued_at": now,
        "next_attempt_at": now,  # due at once: the same pass's charge phase picks them up
        "attempt_count": 0,
        "memo": "",
    }
    returning = "ON CONFLICT (billing_key) DO NOTHING RETURNING id, billing_key"
    if connection.vendor != "postgresql":
        created = insert_rows(Invoice, _INVOICE_FIELDS, rows, constants=constants, suffix=returning)
        invoice_numbers_assign(invoice_id for invoice_id, _ in created)
        return created
    table = Invoice._meta.db_table
    draw = f"(SELECT nextval(pg_get_serial_sequence('{table}', 'id')) AS id, r.* FROM r) AS x"  # noqa: S608 - from _meta
    return insert_rows(
        Invoice,
        _INVOICE_FIELDS,
        rows,
        constants=constants,
        extra_columns={"id": "x.id", "number": _invoice_number_sql("x.id")},
        source=draw,
        suffix=returning,
    )


# --- The close ---------------------------------------------------------------------------------------------


@dataclass
class _Closing:
    """One subscription's period close, planned in Python before the batch's statements."""

    id: int
    team_id: int
    old_tier: Tier
    new_tier: Tier
    old_start: datetime
    old_end: datetime
    anchor: datetime
    start: datetime
    end: datetime
    status: str
    change: str  # "", "downgrade", "cancel", "trial_end"
    trial_ended: bool
    # The boundaries as they travel to the database (datetime_text), converted once each: they recur
    # in several statements (the old end is the compare-and-set value and the new start; the fee
    # line's period is the invoice's), and converting per use was a tenth of the close's time.
    old_start_text: Any = None
    old_end_text: Any = None
    anchor_text: Any = None
    start_text: Any = None
    end_text: Any = None
    overage: tuple[int, int] | None = None  # (tokens, cents) of the ended period


_DUE_COLUMNS = (
    "id",
    "team_id",
    "tier_id",
    "pending_tier_id",
    "cancel_at_period_end",
    "status",
    "billing_anchor",
    "current_period_start",
    "current_period_end",
)
_INVOICE_FIELDS = ("billing_key", "team", "subscription", "currency", "total_cents", "period_start", "period_end")
_LINE_FIELDS = (
    "invoice",
    "kind",
    "description",
    "tier",
    "quantity",
    "unit_amount_cents",
    "amount_cents",
    "period_start",
    "period_end",
)
_AUDIT_ACTIONS = {
    "cancel": AuditEntry.Action.CANCEL_APPLIED,
    "downgrade": AuditEntry.Action.DOWNGRADE_APPLIED,
    "trial_end": AuditEntry.Action.TRIAL_ENDED,
}


def _plan(
    row: tuple, *, tiers: dict[int, Tier], free: Tier, now: datetime, text: Callable[[datetime], Any]
) -> _Closing:
    sub_id, team_id, tier_id, pending_tier_id, cancel, status, anchor, old_start, old_end = row
    old_tier = tiers[tier_id]
    new_tier, change = old_tier, ""
    if cancel:
        new_tier, change = free, "cancel"
    elif pending_tier_id is not None:
        new_tier, change = tiers[pending_tier_id], "downgrade"
    trial_ending = status == Subscription.Status.TRIALING
    if trial_ending and not change:
        change = "trial_end"
    anchor, start, end = next_period(anchor, new_tier.billing_interval, old_end)
    if new_tier.is_free and end <= now:
        # Free periods are never invoiced, so a free subscription behind by several periods jumps
        # straight to the current one. A paid one advances one period per pass instead: each
        # renewal is charged (and may fail into dunning) before the next period is invoiced.
        start, end = period_containing(anchor, new_tier.billing_interval, now)
    old_end_text = text(old_end)
    return _Closing(
        id=sub_id,
        team_id=team_id,
        old_tier=old_tier,
        new_tier=new_tier,
        old_start=old_start,
        old_end=old_end,
        anchor=anchor,
        start=start,
        end=end,
        # A trial ends into an active subscription; its first charge decides whether it stays so.
        status=Subscription.Status.ACTIVE if trial_ending else status,
        change=change,
        trial_ended=trial_ending,
        old_start_text=text(old_start),
        old_end_text=old_end_text,
        anchor_text=text(anchor),
        start_text=old_end_text if start == old_end else text(start),
        end_text=text(end),
    )


def _invoice_rows(c: _Closing) -> tuple[tuple, list[tuple]] | None:
    """The renewal invoice of one closing (a row of _INVOICE_FIELDS) and its lines (rows of
    _LINE_FIELDS without the invoice id), or None when nothing is owed (free -> free)."""
    lines: list[tuple] = []
    if c.new_tier.is_paid:
        # The fee of the NEW period, at the tier's price now: a price change applies from the next
        # period on, and issued invoices keep the amounts they were issued with.
        fee = c.new_tier.price_cents
        lines.append(
            (
                InvoiceLine.Kind.FEE.value,
                fee_description(tier=c.new_tier, start=c.start, end=c.end),
                c.new_tier.pk,
                1,
                fee,
                fee,
                c.start_text,
                c.end_text,
            )
        )
    if c.overage is not None:
        # The ENDED period's overage, at the tier it was used on.
        tokens, cents = c.overage
        lines.append(
            (
                InvoiceLine.Kind.OVERAGE.value,
                overage_description(tier=c.old_tier, tokens=tokens),
                c.old_tier.pk,
                tokens,
                c.old_tier.overage_cents_per_million_tokens,
                cents,
                c.old_start_text,
                c.old_end_text,
            )
        )
    if not lines:
        return None
    paid_next = c.new_tier.is_paid
    invoice = (
        f"renewal:{c.id}:{c.start.isoformat()}",
        c.team_id,
        c.id,
        c.new_tier.currency if paid_next else c.old_tier.currency,
        sum(line[5] for line in lines),
        c.start_text if paid_next else c.old_start_text,  # the fee's period; the ended one for overage alone
        c.end_text if paid_next else c.old_end_text,
    )
    return invoice, lines


def _close_batch(
    *, rows: Sequence[tuple], tiers: dict[int, Tier], free: Tier, now: datetime, result: PeriodCloseResult
) -> None:
    text = datetime_text()
    closings = [_plan(row, tiers=tiers, free=free, now=now, text=text) for row in rows]
    # Overage of the ended period, at the tier it ended on. A trial is free, its usage included.
    wanted = [(c.team_id, c.old_start, c.old_end) for c in closings if c.old_tier.bills_overage and not c.trial_ended]
    tokens_by_team = tokens_used_by_period(periods=wanted)
    for c in closings:
        tokens = tokens_by_team.get(c.team_id)
        if tokens:  # no usage, no overage
            c.overage = overage_line_values(tier=c.old_tier, tokens_used=tokens)

    advanced = _periods_advance(
        [(c.id, c.old_end_text, c.new_tier.pk, c.anchor_text, c.start_text, c.end_text, c.status) for c in closings]
    )
    closings = [c for c in closings if c.id in advanced]
    result.periods_closed += len(closings)

    invoices: dict[str, list[tuple]] = {}
    invoice_rows: list[tuple] = []
    for c in closings:
        planned = _invoice_rows(c)
        if planned is not None:
            invoice_rows.append(planned[0])
            invoices[planned[0][0]] = planned[1]
    if invoice_rows:
        # Only the invoices this statement created come back: one issued before (which the
        # compare-and-set above makes impossible, but the unique key is what guarantees it) keeps
        # its lines and gets none added.
        created = _invoices_insert(invoice_rows, now=now)
        line_rows = [(invoice_id, *line) for invoice_id, key in created for line in invoices[key]]
        if line_rows:
            insert_rows(InvoiceLine, _LINE_FIELDS, line_rows)
        result.invoices_created += len(created)

    audits = [
        AuditEntry(
            team_id=c.team_id,
            action=_AUDIT_ACTIONS[c.change],
            description=f"{c.old_tier.name} -> {c.new_tier.name} at the period end.",
            data={"from_tier": c.old_tier.slug, "to_tier": c.new_tier.slug, "at": c.old_end.isoformat()},
            created_at=now,
        )
        for c in closings
        if c.change
    ]
    if audits:
        AuditEntry.objects.bulk_create(audits)
        result.changes_applied += len(audits)


def periods_close(
    *, now: datetime, free: Tier, batch_size: int = CLOSE_BATCH_SIZE, concurrency: int = 1
) -> PeriodCloseResult:
    """Close every period that ended by ``now``. See billing.billing_periods_close for the contract.

    On PostgreSQL the database plans and writes each batch in one statement (billing/close_pg.py);
    elsewhere (SQLite) the batch is planned here, in Python. Both give the same rows (a test).
    ``concurrency``: on PostgreSQL, how many batches are closed at once, on as many connections
    (billing/close_pg.py); the Python planner closes one at a time."""
    result = PeriodCloseResult()
    if connection.vendor == "postgresql" and SET_BASED_ON_POSTGRESQL:
        from billing.close_pg import periods_close_pg

        periods_close_pg(now=now, free=free, batch_size=batch_size, result=result, concurrency=concurrency)
        return result
    tiers = {tier.pk: tier for tier in Tier.objects.all()}
    last_id = 0
    while True:
        with transaction.atomic():
            rows = list(
                Subscription.objects.select_for_update(skip_locked=True, of=("self",))
                .filter(
                    id__gt=last_id,
                    current_period_end__lte=now,
                    status__in=[Subscription.Status.ACTIVE, Subscription.Status.TRIALING],
                )
                .order_by("id")
                .values_list(*_DUE_COLUMNS)[:batch_size]
            )
            if not rows:
                return result
            # Keyset over ids: each subscription is visited at most once per pass.
            last_id = rows[-1][0]
            result.batches += 1
            _close_batch(rows=rows, tiers=tiers, free=free, now=now, result=result)
