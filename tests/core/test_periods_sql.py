"""The SQL twins of core/periods.py (add_months_sql, period_index_sql, iso_utc_sql) agree with the
Python functions, over month ends, leap days, yearly steps, moments before the anchor (negative
indexes) and microseconds. PostgreSQL only: the set-based period close (billing/close_pg.py) is."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from core.periods import add_months, add_months_sql, iso_utc_sql, period_bounds, period_containing, period_index_sql

pytestmark = pytest.mark.django_db

ANCHORS = [
    datetime(2026, 1, 31, 9, tzinfo=UTC),
    datetime(2024, 2, 29, 12, tzinfo=UTC),
    datetime(2025, 3, 15, 0, 0, 0, 250_000, tzinfo=UTC),
    datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC),
]


def _moments(anchor: datetime) -> list[datetime]:
    """Period boundaries around the anchor (both sides) and moments just before and after them."""
    out = []
    for months in range(-14, 27):
        edge = add_months(anchor, months)
        out += [edge, edge - timedelta(microseconds=1), edge + timedelta(hours=5)]
    return out


def test_the_sql_period_arithmetic_agrees_with_the_python_one():
    if connection.vendor != "postgresql":
        pytest.skip("the SQL twins are PostgreSQL's")
    cases = [(a, step, m) for a in ANCHORS for step in (1, 12) for m in _moments(a)]
    sql = (  # noqa: S608 - SQL built from the functions under test, values as parameters
        "SELECT {idx}, {start}, {plus}, {iso} FROM (SELECT %s::timestamptz AS a, %s::int AS step,"
        " %s::timestamptz AS m) v"
    ).format(
        idx=period_index_sql("v.a", "v.step", "v.m"),
        start=add_months_sql("v.a", f"({period_index_sql('v.a', 'v.step', 'v.m')}) * v.step"),
        plus=add_months_sql("v.m", "v.step"),
        iso=iso_utc_sql("v.m"),
    )
    with connection.cursor() as cursor:
        for anchor, step, moment in cases:
            cursor.execute(sql, [anchor, step, moment])
            index, start, plus, iso = cursor.fetchone()
            interval = "month" if step == 1 else "year"
            expected_start, _ = period_containing(anchor, interval, moment)
            assert start == expected_start, (anchor, step, moment)
            assert period_bounds(anchor, interval, index)[0] == expected_start, (anchor, step, moment)
            assert plus == add_months(moment, step), moment
            assert iso == moment.isoformat(), moment
