"""A read query the ORM builds once per process and the hot path then runs as plain SQL.

The model API's cold path (an API key, a team's entitlements, a key's channel, a team's licence gate,
each cached for a few seconds by core.local_cache) ran each read through the ORM: building the query,
compiling it to SQL and converting the row cost about 1 ms of CPU per read on a loaded 2-core machine,
against about 40 µs for the same statement on a cursor. With thousands of active teams those caches
mostly miss (a team comes back after the TTL), so that compilation was most of a metered request.

``CompiledFirst`` takes a function that builds the queryset from its arguments, builds it once with
marker values, keeps the SQL and the positions of the markers among its parameters, and then runs the
statement with the real values, converting the row's values with the converters the ORM would apply
(the database backend's, e.g. SQLite's text to aware datetimes, and the fields', e.g. JSON). The
result is what ``queryset.values_list(...).first()`` gives. Only the marker parameters change per
call; any other parameter of the queryset (a constant status, say) is kept as compiled.

This module imports no TierLab app (core is the bottom layer).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connection
from django.db.models import QuerySet

from core.sql import hot_cursor


class _Marker(str):
    """A text parameter value no real call passes: where it lands among the compiled parameters is where
    the call's value goes."""


class CompiledFirst:
    """``build(*markers)`` -> a ``values_list`` queryset; ``first(*values)`` -> its first row or None.

    Each argument of ``build`` must reach the SQL as exactly one parameter, unchanged (an ``=`` filter
    on an integer or text column); the compilation checks that every marker is found once. ``ints``:
    how many leading arguments are integers (their markers are integers)."""

    def __init__(self, build: Callable[..., QuerySet], *, arity: int, ints: int = 0) -> None:
        self._build = build
        self._arity = arity
        self._ints = ints
        self._compiled: dict[str, tuple[str, list[Any], list[int], list[tuple[Any, list]]]] = {}
        self._lock = threading.Lock()

    def _markers(self) -> list[Any]:
        return [
            -(7_391_275_310_000 + i) if i < self._ints else _Marker(f"__tierlab_marker_{i}__")
            for i in range(self._arity)
        ]

    def _compile(self) -> tuple[str, list[Any], list[int], list[tuple[Any, list]]]:
        markers = self._markers()
        queryset = self._build(*markers)
        if not queryset.ordered:
            queryset = queryset.order_by("pk")  # what .first() does
        compiler = queryset[:1].query.get_compiler(connection=connection)
        sql, params = compiler.as_sql()
        params = list(params)
        positions = []
        for marker in markers:
            found = [i for i, value in enumerate(params) if value == marker]
            if len(found) != 1:
                raise ValueError(f"compiled query: argument {marker!r} is {len(found)} parameters, not one")
            positions.append(found[0])
        converters = compiler.get_converters([col for col, _, _ in compiler.select])
        per_column = [(None, []) for _ in compiler.select]
        for index, (funcs, expression) in converters.items():
            per_column[index] = (expression, funcs)
        return sql, params, positions, per_column

    def first(self, *values: Any) -> tuple | None:
        vendor = connection.vendor
        compiled = self._compiled.get(vendor)
        if compiled is None:
            with self._lock:
                compiled = self._compiled.get(vendor) or self._compile()
                self._compiled[vendor] = compiled
        sql, params, positions, columns = compiled
        params = list(params)
        for position, value in zip(positions, values, strict=True):
            params[position] = value
        with hot_cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        if row is None:
            return None
        return tuple(
            _convert(value, expression, funcs) if funcs else value
            for value, (expression, funcs) in zip(row, columns, strict=True)
        )


def _convert(value: Any, expression: Any, funcs: list) -> Any:
    for func in funcs:
        value = func(value, expression, connection)
    return value
