"""How a tier prices usage beyond its included tokens: the one place the overage rule lives (the period
close's invoices, the checkout's estimates, the dashboard's estimated bill and the spend cap all use it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tiers.models import Tier

TOKENS_PER_MILLION = 1_000_000


def ceil_div(numerator: int, denominator: int) -> int:
    """``ceil(numerator / denominator)`` for non-negative integers, without floats."""
    return -(-numerator // denominator)


def overage_tokens(*, tokens_used: int, included_tokens: int | None) -> int:
    """Tokens beyond the included ones (0 when unlimited or within them)."""
    if included_tokens is None:
        return 0
    return max(tokens_used - included_tokens, 0)


def overage_cents(*, tokens: int, cents_per_million_tokens: int) -> int:
    """The price of ``tokens`` overage tokens, rounded UP to the cent.

    Up, not to the nearest: the overage price is a price per million tokens, and a customer who used
    1 token over is billed for it (a cent) rather than getting fractions of a cent for free on every
    invoice; at most one cent per invoice in our favour, as metered billing usually does.
    """
    if tokens <= 0:
        return 0
    return ceil_div(tokens * cents_per_million_tokens, TOKENS_PER_MILLION)


def overage_line_values(*, tier: Tier, tokens_used: int) -> tuple[int, int] | None:
    """(overage tokens, cents) for ``tokens_used`` in one period of ``tier``, or None if nothing is owed.

    ``monthly_tokens`` is what one billing period includes, the same window the quota enforces
    (Entitlements.period_at): for a yearly tier that is the year."""
    if not tier.bills_overage or not tier.overage_cents_per_million_tokens:
        return None
    tokens = overage_tokens(tokens_used=tokens_used, included_tokens=tier.monthly_tokens)
    cents = overage_cents(tokens=tokens, cents_per_million_tokens=tier.overage_cents_per_million_tokens)
    return (tokens, cents) if cents > 0 else None


# --- The same rule in SQL (PostgreSQL), for the set-based period close (billing/close_pg.py) ---------
# Twins of overage_tokens and overage_cents, beside them so the rule stays in one place; a test compares
# them (tests/billing/test_close_set_based.py closes the same data both ways).


def overage_tokens_sql(*, used: str, included: str) -> str:
    """SQL: tokens of ``used`` beyond ``included`` (0 when ``included`` is NULL, i.e. unlimited)."""
    return f"CASE WHEN ({included}) IS NULL THEN 0 ELSE GREATEST(({used}) - ({included}), 0) END"


def overage_cents_sql(*, tokens: str, cents_per_million: str) -> str:
    """SQL: the price of ``tokens`` overage tokens rounded UP to the cent (integer arithmetic only)."""
    return (
        f"CASE WHEN ({tokens}) <= 0 THEN 0 ELSE "
        f"div(({tokens})::numeric * ({cents_per_million}) + {TOKENS_PER_MILLION - 1}, {TOKENS_PER_MILLION})::bigint END"
    )
