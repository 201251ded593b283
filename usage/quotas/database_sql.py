"""The SQL of the database quota backend (usage/quotas/database.py, whose docstring says why each
statement is exact), built once per database vendor: identifiers from the models' ``_meta``, every
value a named parameter."""

from __future__ import annotations

from django.db import connection

from accounts.services import api_key_mark_used_sql
from core.sql import quoted_table
from usage.models import QuotaReservation, TeamQuotaState, UsageRecord
from usage.services import USAGE_RECORD_COLUMNS

# RETURNING / SELECT order of the counters.
COUNTERS = ("minute_requests", "minute_tokens", "day_requests", "period_tokens")


def _positive(expression: str) -> str:
    # Portable MAX(0, x): SQLite spells it MAX, PostgreSQL GREATEST.
    return f"CASE WHEN {expression} > 0 THEN {expression} ELSE 0 END"


def _current(column: str, start_column: str, param: str) -> str:
    """The counter as seen from the window ``param``: zero if the row still holds an older window."""
    return f"CASE WHEN {start_column} = %({param})s THEN {column} ELSE 0 END"


def statements() -> dict[str, str]:
    quota = quoted_table(TeamQuotaState)
    record = quoted_table(UsageRecord)
    reservation = quoted_table(QuotaReservation)
    minute_requests = _current("minute_requests", "minute_start", "minute")
    minute_tokens = _current("minute_tokens", "minute_start", "minute")
    day_requests = _current("day_requests", "day_start", "day")
    period_tokens = _current("period_tokens", "period_start", "period")

    def charge_set(with_period: bool) -> str:
        # Checked with %(tokens)s (the reservation), consumed with %(charged)s (the same, or the actual
        # tokens when consume records the request in the same transaction).
        period_set = ""
        if with_period:
            period_set = f", period_tokens = {period_tokens} + %(charged)s, period_start = %(period)s"
        return (
            f" SET minute_requests = {minute_requests} + 1,"
            f" minute_tokens = {minute_tokens} + %(charged)s,"
            " minute_start = %(minute)s,"
            f" day_requests = {day_requests} + 1,"
            " day_start = %(day)s"
            f"{period_set}"
        )

    def room(with_period: bool) -> str:
        period_check = f" AND {period_tokens} + %(tokens)s <= %(monthly_tokens)s" if with_period else ""
        return (
            " WHERE team_id = %(team)s"
            f" AND {minute_requests} + 1 <= %(requests_per_minute)s"
            f" AND {minute_tokens} + %(tokens)s <= %(tokens_per_minute)s"
            f" AND {day_requests} + 1 <= %(requests_per_day)s"
            f"{period_check}"
        )

    def charge(with_period: bool) -> str:
        return f"UPDATE {quota}{charge_set(with_period)}{room(with_period)} RETURNING {', '.join(COUNTERS)}"

    def charge_and(with_period: bool, insert: str, held_elsewhere: str, *, checked: bool, mark: bool) -> str:
        # PostgreSQL: the charge and ``insert`` in ONE statement (the module docstring says why it is exact).
        # ``checked`` (a client's request id): inserted only if ``held_elsewhere`` is not, and only if
        # no step of the team committed while this one waited for the row (s: q's version is the
        # snapshot's); the last column says when that was all that stopped it (raced: the caller runs
        # the statement again). Unchecked (an id generated for this request, which nothing else can
        # hold yet): neither check. ``mark``: the key's last-used time moves in it too, when inserted
        # (a CTE that modifies runs whether or not the query reads it), instead of in an UPDATE of its
        # own after the statement.
        key_mark = f", k AS ({api_key_mark_used_sql()} AND EXISTS (SELECT 1 FROM i))" if mark else ""  # noqa: S608 - no values
        snapshot, guard, raced = "", "", "false"
        if checked:
            snapshot = (
                f" s AS (SELECT (SELECT version FROM q) = (SELECT xmin FROM {quota} WHERE team_id = %(team)s)"  # noqa: S608 - identifiers from _meta, values as parameters
                " AS current),"
            )
            guard = f" WHERE NOT EXISTS ({held_elsewhere}) AND (SELECT current FROM s)"  # noqa: S608 - no values
            raced = "NOT (SELECT current FROM s)"
        return (
            f"WITH q AS (SELECT xmin AS version FROM {quota}{room(with_period)} FOR NO KEY UPDATE),{snapshot}"  # noqa: S608 - identifiers from _meta, values as parameters
            f" i AS ({insert}{guard} ON CONFLICT DO NOTHING RETURNING id),"
            f" u AS (UPDATE {quota}{charge_set(with_period)} WHERE team_id = %(team)s AND EXISTS (SELECT 1 FROM i)"
            f" RETURNING {', '.join(COUNTERS)}){key_mark}"
            f" SELECT u.*, (SELECT id FROM i), {raced} FROM (SELECT 1 AS one) AS d LEFT JOIN u ON true"
        )

    # What each one-statement charge inserts (from q, so nothing without room), and what holds its id
    # elsewhere (a reservation for a record, a record for a reservation).
    record_insert = (
        f"INSERT INTO {record} ({USAGE_RECORD_COLUMNS})"  # noqa: S608 - identifiers from _meta, values as parameters
        f" SELECT {', '.join(f'%(r{n})s' for n in range(len(USAGE_RECORD_COLUMNS.split(','))))} FROM q"
    )
    reservation_held = f"SELECT 1 FROM {reservation} WHERE team_id = %(team)s AND request_id = %(request_id)s"  # noqa: S608 - identifiers from _meta, values as parameters
    reservation_hold = (
        f"INSERT INTO {reservation} (team_id, request_id, request_hash, tokens, minute_start, day_start,"  # noqa: S608 - identifiers from _meta, values as parameters
        " period_start, reserved_at)"
        " SELECT %(team)s, %(request_id)s, %(request_hash)s, %(tokens)s, %(minute)s, %(day)s, %(period)s,"
        " %(reserved_at)s FROM q"
    )
    record_held = f"SELECT 1 FROM {record} WHERE team_id = %(team)s AND request_key = %(request_id)s"  # noqa: S608 - identifiers from _meta, values as parameters
    one_statement = {}
    if connection.vendor == "postgresql":
        # Named <consume|reserve>_one[_period][_mark][_new] (usage/quotas/database.py _one_statement).
        for with_period in (False, True):
            for checked in (True, False):
                suffix = f"{'_period' if with_period else ''}{{mark}}{'' if checked else '_new'}"
                for mark in (False, True):
                    one_statement[f"consume_one{suffix.format(mark='_mark' if mark else '')}"] = charge_and(
                        with_period, record_insert, reservation_held, checked=checked, mark=mark
                    )
                one_statement[f"reserve_one{suffix.format(mark='')}"] = charge_and(
                    with_period, reservation_hold, record_held, checked=checked, mark=False
                )

    def adjust(column: str, start_column: str, window: str, delta: str) -> str:
        # Only in the window that was reserved: a rolled-over counter belongs to later requests.
        return (
            f"{column} = CASE WHEN {start_column} = %({window})s"
            f" THEN {_positive(f'{column} + %({delta})s')} ELSE {column} END"
        )

    return {
        **one_statement,
        "charge": charge(with_period=False),
        "charge_period": charge(with_period=True),
        # The reservation holds the request id; not if a record holds it (or another reservation does:
        # the unique key). After the quota UPDATE, so it sees every earlier step of the team.
        "reservation_insert": (
            f"INSERT INTO {reservation} (team_id, request_id, request_hash, tokens, minute_start, day_start,"  # noqa: S608 - identifiers from _meta, values as parameters
            " period_start, reserved_at)"
            " SELECT %(team)s, %(request_id)s, %(request_hash)s, %(tokens)s, %(minute)s, %(day)s, %(period)s,"
            " %(reserved_at)s"
            f" WHERE NOT EXISTS (SELECT 1 FROM {record} WHERE team_id = %(team)s AND request_key = %(request_id)s)"
            " ON CONFLICT (team_id, request_id) DO NOTHING RETURNING id"
        ),
        "reservation_delete": f"DELETE FROM {reservation} WHERE id = %(reservation)s RETURNING id",  # noqa: S608 - identifiers from _meta, values as parameters
        # Why a step changed nothing: who holds the request id (a reservation: its hash; a record: its
        # hash and whether it is within the retention), does the team's row exist, the counts. The LEFT
        # JOINs from a one-row table answer all of it in one statement.
        "explain": (
            f"SELECT (SELECT request_hash FROM {reservation} WHERE team_id = %(team)s AND request_id = %(request_id)s),"  # noqa: S608 - identifiers from _meta, values as parameters
            " r.id, r.request_hash, CASE WHEN r.created_at >= %(retained_since)s THEN 1 ELSE 0 END,"
            f" q.team_id, {_current('q.minute_requests', 'q.minute_start', 'minute')},"
            f" {_current('q.minute_tokens', 'q.minute_start', 'minute')},"
            f" {_current('q.day_requests', 'q.day_start', 'day')},"
            f" {_current('q.period_tokens', 'q.period_start', 'period')}"
            f" FROM (SELECT 1 AS one) AS d"
            f" LEFT JOIN {record} AS r ON r.team_id = %(team)s AND r.request_key = %(request_id)s"
            f" LEFT JOIN {quota} AS q ON q.team_id = %(team)s"
        ),
        # A record past the retention gives its request id up (the release task's work, done early).
        "release": (
            f"UPDATE {record} SET request_key = NULL"  # noqa: S608 - identifiers from _meta, values as parameters
            " WHERE team_id = %(team)s AND request_key = %(request_id)s AND created_at < %(retained_since)s"
        ),
        "used": (
            f"SELECT {minute_requests}, {minute_tokens}, {day_requests}, {period_tokens}"  # noqa: S608 - identifiers from _meta, values as parameters
            f" FROM {quota} WHERE team_id = %(team)s"
        ),
        "adjust": (
            f"UPDATE {quota} SET"  # noqa: S608 - identifiers from _meta, values as parameters
            f" {adjust('minute_requests', 'minute_start', 'minute', 'requests')},"
            f" {adjust('minute_tokens', 'minute_start', 'minute', 'tokens')},"
            f" {adjust('day_requests', 'day_start', 'day', 'requests')},"
            f" {adjust('period_tokens', 'period_start', 'period', 'tokens')}"
            " WHERE team_id = %(team)s"
        ),
    }
