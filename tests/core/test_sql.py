"""core.sql: hand-written statements see datetimes as the ORM stores them, rows travel as one JSON
parameter, and one INSERT of them returns what RETURNING asks for (SQLite here, PostgreSQL in CI)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from core import sql
from core.models import Heartbeat

T0 = datetime(2026, 3, 1, 5, 17, 3, 250_000, tzinfo=UTC)


@pytest.mark.django_db
def test_a_datetime_parameter_compares_equal_to_what_the_orm_stored():
    Heartbeat.objects.create(name="beat", beat_at=T0)
    table = sql.quoted_table(Heartbeat)
    rows = sql.execute(f"SELECT name FROM {table} WHERE beat_at = %s", [sql.param(T0)])  # noqa: S608
    assert rows == [("beat",)]
    later = sql.execute(f"SELECT name FROM {table} WHERE beat_at > %s", [sql.param(T0 - timedelta(microseconds=1))])  # noqa: S608
    assert later == [("beat",)]
    assert sql.param(7) == 7 and sql.param("text") == "text"


@pytest.mark.django_db
def test_rows_travel_as_one_parameter_and_insert_in_one_statement(django_assert_num_queries):
    Heartbeat.objects.create(name="existing", beat_at=T0)
    rows = [(f"task-{i}", T0 + timedelta(hours=i, microseconds=i)) for i in range(3)] + [("existing", T0)]
    with django_assert_num_queries(1):
        inserted = sql.insert_rows(
            Heartbeat,
            ["name", "beat_at"],
            rows,
            constants={"count": 7},
            suffix="ON CONFLICT (name) DO NOTHING RETURNING name",
        )
    assert sorted(name for (name,) in inserted) == ["task-0", "task-1", "task-2"]  # not the existing one
    stored = {h.name: (h.beat_at, h.count) for h in Heartbeat.objects.all()}
    assert stored["task-2"] == (T0 + timedelta(hours=2, microseconds=2), 7)
    assert stored["existing"] == (T0, 0)

    cte, params = sql.rows_cte("r", [sql.column_and_type(Heartbeat, "name")], [("task-1",), ("nobody",)])
    table = sql.quoted_table(Heartbeat)
    found = sql.execute(f"WITH {cte} SELECT h.name FROM r JOIN {table} h ON h.name = r.name", params)  # noqa: S608
    assert found == [("task-1",)] and len(params) == 1


def test_rows_refuse_values_json_cannot_carry():
    with pytest.raises(TypeError, match="cannot send"):
        sql.rows_cte("r", [("x", "text")], [(object(),)])


def test_the_system_check_refuses_an_sqlite_without_returning(monkeypatch):
    assert sql.sqlite_version_check() == []
    old = SimpleNamespace(vendor="sqlite", Database=SimpleNamespace(sqlite_version_info=(3, 34, 1)))
    monkeypatch.setattr(sql, "connections", {"default": old})
    [error] = sql.sqlite_version_check()
    assert error.id == "core.E001" and "3.34.1" in error.msg
