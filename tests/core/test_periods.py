from datetime import UTC, datetime

import pytest

from core.periods import add_months, period_bounds


def dt(y, m, d, h=12):
    return datetime(y, m, d, h, tzinfo=UTC)


@pytest.mark.parametrize(
    ("anchor", "months", "expected"),
    [
        (dt(2026, 1, 15), 1, dt(2026, 2, 15)),
        (dt(2026, 1, 31), 1, dt(2026, 2, 28)),  # clamped to a short month
        (dt(2028, 1, 31), 1, dt(2028, 2, 29)),  # leap year
        (dt(2026, 1, 31), 2, dt(2026, 3, 31)),  # from the anchor, so no drift after February
        (dt(2026, 12, 5), 1, dt(2027, 1, 5)),  # year boundary
        (dt(2026, 3, 31), 12, dt(2027, 3, 31)),
        (dt(2028, 2, 29), 12, dt(2029, 2, 28)),  # yearly from Feb 29
    ],
)
def test_add_months_clamps_and_rolls_over(anchor, months, expected):
    assert add_months(anchor, months) == expected


def test_periods_are_contiguous_and_do_not_drift():
    anchor = dt(2026, 1, 31)
    ends = []
    for index in range(4):
        start, end = period_bounds(anchor, "month", index)
        if ends:
            assert start == ends[-1]
        ends.append(end)
    assert ends == [dt(2026, 2, 28), dt(2026, 3, 31), dt(2026, 4, 30), dt(2026, 5, 31)]
    assert period_bounds(anchor, "year", 0) == (anchor, dt(2027, 1, 31))


def test_period_containing_finds_the_current_period_from_the_anchor():
    from core.periods import period_containing

    anchor = dt(2026, 1, 31, 10)
    assert period_containing(anchor, "month", dt(2026, 1, 31, 10)) == (anchor, dt(2026, 2, 28, 10))
    assert period_containing(anchor, "month", dt(2026, 2, 28, 9)) == (anchor, dt(2026, 2, 28, 10))
    assert period_containing(anchor, "month", dt(2026, 2, 28, 10)) == (dt(2026, 2, 28, 10), dt(2026, 3, 31, 10))
    assert period_containing(anchor, "month", dt(2026, 3, 15)) == (dt(2026, 2, 28, 10), dt(2026, 3, 31, 10))
    assert period_containing(anchor, "year", dt(2027, 1, 31, 9)) == (anchor, dt(2027, 1, 31, 10))
