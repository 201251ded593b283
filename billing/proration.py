"""Pure money arithmetic of the billing engine: proration and overage. No database, no clock.

Every amount is an integer number of cents; intermediate values are exact ``Fraction``s, never
floats (0.1 + 0.2 != 0.3 is not a risk we take with money). Rounding happens exactly once per line,
at the end, so a line is the same whether computed here, in a test, or by hand on a calculator.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

_MICROSECOND = timedelta(microseconds=1)


def round_half_up(value: Fraction) -> int:
    """``value`` rounded to the nearest integer, halves away from zero.

    Python's ``round`` rounds halves to even (banker's rounding): 0.5 -> 0, 2.5 -> 2. Invoices are read
    by people who expect the schoolbook rule, and Stripe's own proration rounds half up as well, so a
    half cent becomes a whole cent. Negative values mirror positive ones (-0.5 -> -1), so a credit and
    a charge of the same size cancel out exactly.
    """
    if value < 0:
        return -round_half_up(-value)
    return int(value + Fraction(1, 2))  # int() truncates toward zero, which is floor for >= 0


def period_fraction_remaining(*, period_start: datetime, period_end: datetime, at: datetime) -> Fraction:
    """The share of the period ``[period_start, period_end)`` still ahead at ``at``, in [0, 1].

    Measured in (micro)seconds rather than days: periods are calendar months of 28, 29, 30 or 31 days
    (and clamped at month ends: a period from Jan 31 ends on Feb 28, so it is 28 days long), and a
    change at 15:00 is not the same as one at 09:00 of the same day. A second of a February period is
    so worth more than a second of a March one, as it should be: the customer paid the same fee for
    fewer seconds. Clamped to [0, 1], so a change before the period (it cannot happen, but) or after
    its end (the engine has not closed the period yet) never produces a negative or oversized line.
    """
    total = (period_end - period_start) // _MICROSECOND
    if total <= 0:
        raise ValueError("a billing period must have a positive length")
    remaining = (period_end - at) // _MICROSECOND
    return Fraction(min(max(remaining, 0), total), total)


@dataclass(frozen=True)
class Proration:
    """The two lines of a mid-period upgrade. ``credit_cents`` is negative (unused time of the old tier,
    given back), ``charge_cents`` positive (the rest of the period at the new tier's price)."""

    fraction: Fraction
    credit_cents: int
    charge_cents: int

    @property
    def total_cents(self) -> int:
        return self.credit_cents + self.charge_cents


def proration_compute(
    *, old_price_cents: int, new_price_cents: int, period_start: datetime, period_end: datetime, at: datetime
) -> Proration:
    """Proration of a tier change at ``at`` within ``[period_start, period_end)``.

    credit = -round_half_up(old_price x fraction), charge = +round_half_up(new_price x fraction), each
    rounded on its own (not the difference): each is a line of its own on the invoice, and each line
    must be exactly what its description says. So the total may differ by a cent from rounding the
    difference, which is how Stripe prorates too.
    """
    fraction = period_fraction_remaining(period_start=period_start, period_end=period_end, at=at)
    return Proration(
        fraction=fraction,
        credit_cents=-round_half_up(old_price_cents * fraction),
        charge_cents=round_half_up(new_price_cents * fraction),
    )
