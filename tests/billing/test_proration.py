"""Proration and overage arithmetic, to the cent (billing/proration.py and tiers/pricing.py: pure functions,
no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest

from billing.proration import period_fraction_remaining, proration_compute, round_half_up
from core.periods import period_bounds
from tiers.pricing import overage_cents, overage_tokens

PLUS, PRO = 2_000, 20_000  # the seed catalog's monthly prices, in cents


def dt(y, m, d, h=10, minute=0, s=0, us=0):
    return datetime(y, m, d, h, minute, s, us, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Fraction(1, 2), 1),  # banker's rounding would give 0
        (Fraction(5, 2), 3),  # ... and 2 here
        (Fraction(3, 2), 2),
        (Fraction(49_999, 100_000), 0),
        (Fraction(50_001, 100_000), 1),
        (Fraction(-1, 2), -1),  # mirrored: a credit and a charge of one size cancel out
        (Fraction(-5, 2), -3),
        (Fraction(7), 7),
        (Fraction(0), 0),
    ],
)
def test_round_half_up(value, expected):
    assert round_half_up(value) == expected


def test_jan_31_anchor_gives_a_28_day_february_period_and_half_of_it_is_14_days():
    start, end = period_bounds(dt(2026, 1, 31), "month", 0)
    assert (start, end) == (dt(2026, 1, 31), dt(2026, 2, 28))
    assert period_fraction_remaining(period_start=start, period_end=end, at=dt(2026, 2, 14)) == Fraction(1, 2)
    p = proration_compute(
        old_price_cents=PLUS, new_price_cents=PRO, period_start=start, period_end=end, at=dt(2026, 2, 14)
    )
    assert (p.credit_cents, p.charge_cents, p.total_cents) == (-1_000, 10_000, 9_000)


def test_upgrade_in_a_short_february_period_of_a_common_year():
    # Jan 31 -> Feb 28, 2026: 28 days. On Feb 10 at the anchor's hour, 18 days are left: 18/28 = 9/14.
    start, end = dt(2026, 1, 31), dt(2026, 2, 28)
    p = proration_compute(
        old_price_cents=PLUS, new_price_cents=PRO, period_start=start, period_end=end, at=dt(2026, 2, 10)
    )
    assert p.fraction == Fraction(9, 14)
    # 2000 x 9/14 = 1285.71 -> 1286; 20000 x 9/14 = 12857.14 -> 12857
    assert (p.credit_cents, p.charge_cents, p.total_cents) == (-1_286, 12_857, 11_571)


def test_upgrade_in_a_leap_year_february_period():
    # Jan 31 -> Feb 29, 2028: 29 days. On Feb 10, 19 days are left: 19/29.
    start, end = period_bounds(dt(2028, 1, 31), "month", 0)
    assert end == dt(2028, 2, 29)
    p = proration_compute(
        old_price_cents=PLUS, new_price_cents=PRO, period_start=start, period_end=end, at=dt(2028, 2, 10)
    )
    assert p.fraction == Fraction(19, 29)
    # 2000 x 19/29 = 1310.34 -> 1310; 20000 x 19/29 = 13103.45 -> 13103
    assert (p.credit_cents, p.charge_cents, p.total_cents) == (-1_310, 13_103, 11_793)


def test_the_leap_day_itself_is_a_day_of_the_period():
    # Feb 29, 2028 10:00 -> Mar 29, 2028 10:00 is 29 days; on the leap day at 22:00, 28.5 days are left.
    start, end = dt(2028, 2, 29), dt(2028, 3, 29)
    p = proration_compute(
        old_price_cents=PLUS, new_price_cents=PRO, period_start=start, period_end=end, at=dt(2028, 2, 29, 22)
    )
    assert p.fraction == Fraction(57, 58)
    # 2000 x 57/58 = 1965.52 -> 1966; 20000 x 57/58 = 19655.17 -> 19655
    assert (p.credit_cents, p.charge_cents) == (-1_966, 19_655)


def test_a_second_of_february_is_worth_more_than_a_second_of_march():
    # The same 7 days left, in a 28-day period and in a 31-day one.
    feb = proration_compute(
        old_price_cents=PLUS,
        new_price_cents=PRO,
        period_start=dt(2026, 1, 31),
        period_end=dt(2026, 2, 28),
        at=dt(2026, 2, 21),
    )
    mar = proration_compute(
        old_price_cents=PLUS,
        new_price_cents=PRO,
        period_start=dt(2026, 2, 28),
        period_end=dt(2026, 3, 31),
        at=dt(2026, 3, 24),
    )
    assert feb.fraction == Fraction(7, 28) and mar.fraction == Fraction(7, 31)
    assert (feb.credit_cents, feb.charge_cents) == (-500, 5_000)
    # 2000 x 7/31 = 451.61 -> 452; 20000 x 7/31 = 4516.13 -> 4516
    assert (mar.credit_cents, mar.charge_cents) == (-452, 4_516)


def test_change_at_the_first_second_credits_and_charges_whole_periods():
    start, end = dt(2026, 3, 15), dt(2026, 4, 15)
    p = proration_compute(old_price_cents=PLUS, new_price_cents=PRO, period_start=start, period_end=end, at=start)
    assert p.fraction == 1
    assert (p.credit_cents, p.charge_cents, p.total_cents) == (-PLUS, PRO, PRO - PLUS)


def test_change_at_the_last_second_prorates_to_nothing():
    start, end = dt(2026, 1, 31), dt(2026, 2, 28)
    at = end - timedelta(seconds=1)
    p = proration_compute(old_price_cents=PLUS, new_price_cents=PRO, period_start=start, period_end=end, at=at)
    assert p.fraction == Fraction(1, 28 * 86_400)
    # 2000 / 2,419,200 and 20000 / 2,419,200 are both far below half a cent
    assert (p.credit_cents, p.charge_cents, p.total_cents) == (0, 0, 0)


def test_change_near_the_end_rounds_each_line_on_its_own():
    # 2 hours left of a 30-day period: 1/360. 2000/360 = 5.56 -> 6; 20000/360 = 55.56 -> 56.
    start, end = dt(2026, 4, 1), dt(2026, 5, 1)
    p = proration_compute(
        old_price_cents=PLUS, new_price_cents=PRO, period_start=start, period_end=end, at=end - timedelta(hours=2)
    )
    assert p.fraction == Fraction(1, 360)
    assert (p.credit_cents, p.charge_cents, p.total_cents) == (-6, 56, 50)


def test_exact_half_cents_round_up():
    # 5 cents and 3 cents over half a period: 2.5 -> 3 and 1.5 -> 2 (never to even).
    p = proration_compute(
        old_price_cents=3, new_price_cents=5, period_start=dt(2026, 4, 1), period_end=dt(2026, 5, 1), at=dt(2026, 4, 16)
    )
    assert p.fraction == Fraction(1, 2)
    assert (p.credit_cents, p.charge_cents) == (-2, 3)


def test_sub_second_changes_are_exact_not_floats():
    start, end = dt(2026, 4, 1), dt(2026, 5, 1)
    at = dt(2026, 4, 16, 10, 0, 0, 500_000)  # half a second after the middle
    fraction = period_fraction_remaining(period_start=start, period_end=end, at=at)
    assert fraction == Fraction(15 * 86_400 * 10**6 - 500_000, 30 * 86_400 * 10**6)
    assert isinstance(fraction, Fraction)


def test_fraction_is_clamped_outside_the_period():
    start, end = dt(2026, 4, 1), dt(2026, 5, 1)
    assert period_fraction_remaining(period_start=start, period_end=end, at=end + timedelta(days=3)) == 0
    assert period_fraction_remaining(period_start=start, period_end=end, at=start - timedelta(days=3)) == 1
    with pytest.raises(ValueError):
        period_fraction_remaining(period_start=end, period_end=start, at=start)


@pytest.mark.parametrize(
    ("used", "included", "expected_tokens"),
    [(0, 1_000, 0), (1_000, 1_000, 0), (1_001, 1_000, 1), (5_000, None, 0)],
)
def test_overage_tokens(used, included, expected_tokens):
    assert overage_tokens(tokens_used=used, included_tokens=included) == expected_tokens


@pytest.mark.parametrize(
    ("tokens", "price", "expected_cents"),
    [
        (0, 60, 0),
        (1, 60, 1),  # rounded UP: a single token over costs a cent
        (1_000_000, 60, 60),
        (1_500_000, 60, 90),
        (1_500_001, 60, 91),  # 90.00006 -> 91
        (16_666, 60, 1),  # 0.99996 -> 1
        (123_456_789, 40, 4_939),  # 4938.27 -> 4939
    ],
)
def test_overage_cents_round_up_to_the_cent(tokens, price, expected_cents):
    assert overage_cents(tokens=tokens, cents_per_million_tokens=price) == expected_cents
