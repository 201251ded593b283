"""Hand-written SQL for SQLite and PostgreSQL: what every module that writes its own statements shares.

Some statements are hand-written because the ORM cannot say them in one round trip: INSERT ... SELECT
... ON CONFLICT ... RETURNING over a row set (the period close, partner ingest, rollups), a
conditional UPDATE ... RETURNING on the request path (the database quota backend), a set-based
aggregate over a row set (usage in many teams' periods). Each module keeps its statements; the pieces
they have in common live here, once:

- ``param``: a value as a parameter, in the form the ORM stores it (datetimes above all);
- ``datetime_text``: a datetime inside JSON rows; ``rows_cte``: many rows as ONE parameter;
  ``insert_rows``: one INSERT of such rows into a model's table;
- ``quoted_table``, ``column_and_type``: names (and SQL types) from a model's ``_meta``;
- ``execute``: run a statement, return its rows;
- ``hot_cursor``: a cursor for the few statements of the model API's request path, prepared once per
  connection on PostgreSQL (see its docstring).

What the statements need from the database: PostgreSQL (any version Django 5.2 supports) and SQLite
3.35 or later, for ``INSERT ... ON CONFLICT ... RETURNING`` and ``UPDATE ... RETURNING`` (UPSERT came
with 3.24, RETURNING with 3.35); ``sqlite_version_check`` makes ``manage.py check`` say so instead of
the first such statement failing with a syntax error. ``json_each`` needs SQLite's JSON functions,
which Django's own JSONField check already requires.

A literal ``%`` in a statement is written ``%%`` (the paramstyle's escape): the statements all pass
parameters, and with DEBUG on Django's query logging applies ``sql % params`` to them.

This module imports no TierLab app (core is the bottom layer): it works on any model it is given.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core import checks
from django.db import connection, connections
from django.db.models import Model

# INSERT/UPDATE ... RETURNING (3.35); ON CONFLICT DO NOTHING / DO UPDATE (3.24).
MIN_SQLITE_VERSION = (3, 35, 0)

# --- Values -------------------------------------------------------------------------------------------


def param(value: Any) -> Any:
    """``value`` as a parameter of a hand-written statement, in the form the ORM would send it.

    A datetime becomes what the database stores: naive UTC text on SQLite, where datetimes compare as
    text (sqlite3's own adapter would send the aware value as "...+00:00", which sorts after the stored
    form of the same instant and breaks every comparison with a column), and the datetime itself on
    PostgreSQL (a timestamptz). Anything else is passed as it is."""
    if isinstance(value, datetime):
        return connection.ops.adapt_datetimefield_value(value)
    return value


def datetime_text() -> Callable[[datetime], Any]:
    """How a datetime travels inside the JSON rows of ``rows_cte``: as text (JSON has no datetimes),
    ISO 8601 with its offset on PostgreSQL (cast to timestamptz there), the ORM's naive UTC text on
    SQLite (see ``param``). Look it up once and call it per value: it is the converter itself, with no
    vendor test per call (the period close converts hundreds of thousands of values)."""
    if connection.vendor == "postgresql":
        return datetime.isoformat
    return connection.ops.adapt_datetimefield_value


def _json_datetimes() -> Callable[[Any], Any]:
    """json.dumps's ``default``: datetimes as ``datetime_text`` sends them."""
    to_text = datetime_text()

    def default(value: Any) -> Any:
        if isinstance(value, datetime):
            return to_text(value)
        raise TypeError(f"cannot send {type(value).__name__} to the database as JSON")

    return default


# --- Names ----------------------------------------------------------------------------------------------


def quoted_table(model: type[Model]) -> str:
    """The model's table name, quoted for this database."""
    return connection.ops.quote_name(model._meta.db_table)


def column_and_type(model: type[Model], field_name: str) -> tuple[str, str]:
    """(column name, SQL type) of a model field, e.g. for the columns of ``rows_cte``."""
    model_field = model._meta.get_field(field_name)
    return model_field.column, model_field.cast_db_type(connection)


# --- Row sets -------------------------------------------------------------------------------------------


def rows_cte(name: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]) -> tuple[str, list[Any]]:
    """``name (col, ...) AS (...)``, a CTE of ``rows`` (each a sequence of values of ``columns``, which
    are (name, SQL type) pairs), and its single parameter.

    The rows travel as ONE JSON parameter (an array of arrays) that the database unpacks, whatever the
    number of rows. With psycopg's client-side binding, which Django uses, a statement with a
    placeholder per value spends more time being assembled in Python than run, and so does an array
    per column (psycopg quotes every element in Python). Measured closing 10,000 subscriptions on
    PostgreSQL: 2.2 s with bulk_create and VALUES placeholders, 1.5 s with arrays, 0.9 s with JSON.
    json.dumps is C, and PostgreSQL (json_array_elements) and SQLite (json_each) unpack it in C; nor
    is the size bounded by SQLite's 32,766 parameters. Each column is cast to its SQL type on
    PostgreSQL; SQLite stores what it is given (datetimes as the ORM stores them: see datetime_text).
    """
    names = ", ".join(name for name, _ in columns)
    if connection.vendor == "postgresql":
        values = ", ".join(f"CAST(e->>{i} AS {sql_type})" for i, (_, sql_type) in enumerate(columns))
        source = "json_array_elements(CAST(%s AS json)) AS e"
    else:
        values = ", ".join(f"json_extract(e.value, '$[{i}]')" for i in range(len(columns)))
        source = "json_each(%s) AS e"
    payload = json.dumps(rows, default=_json_datetimes(), separators=(",", ":"))
    return f"{name} ({names}) AS (SELECT {values} FROM {source})", [payload]  # noqa: S608 - types from _meta


def insert_rows(
    model: type[Model],
    field_names: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    constants: dict[str, Any] | None = None,
    extra_columns: dict[str, str] | None = None,
    source: str = "r",
    suffix: str = "",
) -> list[tuple]:
    """INSERT ``rows`` (values of ``field_names``) into ``model``'s table in one statement, from a
    ``rows_cte`` named ``r``; returns the rows a RETURNING in ``suffix`` gives (else none).

    ``constants``: fields with the same value in every row, sent once as parameters rather than per
    row. ``extra_columns``: column -> SQL expression over ``source`` (e.g. an id drawn in a subquery
    over ``r``). ``suffix`` (ON CONFLICT, RETURNING) is appended; ``WHERE true`` is there because
    SQLite needs a WHERE to parse an upsert from a SELECT."""
    constants = constants or {}
    extra_columns = extra_columns or {}
    columns = [column_and_type(model, name) for name in field_names]
    cte, params = rows_cte("r", columns, rows)
    pg = connection.vendor == "postgresql"
    constant_columns = [column_and_type(model, name) for name in constants]
    constant_sql = [f"CAST(%s AS {sql_type})" if pg else "%s" for _, sql_type in constant_columns]
    targets = [*extra_columns, *(c for c, _ in columns), *(c for c, _ in constant_columns)]
    selected = [*extra_columns.values(), *(c for c, _ in columns), *constant_sql]
    sql = (
        f"WITH {cte} INSERT INTO {quoted_table(model)} ({', '.join(targets)})"  # noqa: S608 - identifiers from _meta, values as parameters
        f" SELECT {', '.join(selected)} FROM {source} WHERE true {suffix}"
    )
    return execute(sql, [*params, *(param(value) for value in constants.values())])


# --- Running statements -------------------------------------------------------------------------------


# Each statement run through hot_cursor is prepared on its first execution on a connection.
_PREPARE_THRESHOLD = 0


def hot_cursor() -> Any:
    """``connection.cursor()``, except on PostgreSQL with TIERLAB_PG_PREPARED_STATEMENTS on (the
    default): a cursor that binds parameters on the server, whose statements the connection prepares
    on first use and then only executes. Planning was most of the database's work on the model API's
    hot path (measured, issue 17: the cold read of a key 0.34 ms to plan, 0.07 ms to run; the database
    quota backend's one-statement consume 0.22 ms to plan, 0.10 ms to run). Django's own cursors bind
    on the client and never prepare, so the connection's prepare threshold, set here, concerns these
    statements only. Turn the setting off behind a pooler in transaction mode that does not keep
    prepared statements (PgBouncer before 1.21, or without ``max_prepared_statements``). Used as
    ``with hot_cursor() as cursor:``; Django's query logging and execute wrappers see it as any other."""
    if connection.vendor != "postgresql" or not getattr(settings, "TIERLAB_PG_PREPARED_STATEMENTS", False):
        return connection.cursor()
    from django.db.backends.postgresql.base import ServerBindingCursor
    from psycopg.types.string import StrDumper

    connection.close_if_health_check_failed()
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold != _PREPARE_THRESHOLD:
        raw.prepare_threshold = _PREPARE_THRESHOLD
    with connection.wrap_database_errors:
        cursor = ServerBindingCursor(raw)
        # Text parameters as ``text``, not psycopg's default "unknown": a named parameter used twice
        # (a varchar column's value and a comparison) must get one type when the statement is prepared.
        cursor.adapters.register_dumper(str, StrDumper)
        return connection._prepare_cursor(cursor)


def execute(sql: str, params: Sequence[Any]) -> list[tuple]:
    """Run one statement on the default database; its rows (none for a statement without results)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


# --- What the statements need -------------------------------------------------------------------------


def sqlite_version_check(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A system check: every SQLite database is new enough for the statements here (see the module
    docstring). Reads the library's version, without connecting."""
    errors = []
    for alias in connections:
        database = connections[alias]
        if database.vendor != "sqlite":
            continue
        version = database.Database.sqlite_version_info
        if version < MIN_SQLITE_VERSION:
            errors.append(
                checks.Error(
                    f"SQLite {'.'.join(map(str, version))} is too old for database {alias!r}: TierLab's "
                    f"statements need {'.'.join(map(str, MIN_SQLITE_VERSION))} or later "
                    "(INSERT/UPDATE ... RETURNING).",
                    hint="Use a Python built with a newer SQLite, or PostgreSQL (DATABASE_URL).",
                    id="core.E001",
                )
            )
    return errors
