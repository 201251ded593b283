"""The feed of cache invalidations: how every web process learns, within a second, that a key, a team's
entitlements or a tier changed, so its caches can keep entries for minutes instead of seconds.

Why: with thousands of active teams, caches that forget every entry after a few seconds miss on most
requests (each team comes back after its entries expired), and a miss is a SQL read on the request
path (issue 17). Kept for TIERLAB_AUTH_CACHE_MAX_SECONDS instead, they hit; what keeps them right is
this feed:

- **Written by the database.** Triggers on the cached tables (installed by each app's migration with
  ``invalidation_triggers``) insert a ``core.CacheInvalidation`` row with the changed row's team (NULL:
  every team, for a tier or a model) in the transaction that made the change. So every change is
  published whoever makes it (a service, the admin, a bulk ``update()``, the period close's set-based
  SQL, an operator's SQL by hand) and exactly when it commits; a change of a column no cache holds
  (a period advance, ``last_used_at``) publishes nothing.
- **Polled by each process.** ``cache_invalidations_poll`` runs at most every
  TIERLAB_AUTH_CACHE_SECONDS / 3 (one indexed ``SELECT ... WHERE id > n`` per process, from the
  request path of whichever thread finds it due; the others go on without waiting) and hands the new
  rows' teams to every cache made with ``InvalidatedCache`` (core/local_cache.py), which drops their
  entries. A change is therefore seen everywhere within TIERLAB_AUTH_CACHE_SECONDS, as before.
- **Ids, not clocks.** Rows are read by id, so no two machines' clocks are compared. An id can commit
  after a larger one (two transactions on PostgreSQL): an id missing below the largest seen is
  waited for (read again at every poll) for ``GAP_GRACE_SECONDS``, longer than any transaction that
  changes a cached table; an id a rollback consumed never comes and is given up then.
- **A load that raced a change** (its SQL read before the change committed, its store after the poll
  that dropped the team) would keep the old value for minutes: each poll that drops anything moves a
  generation, and a value loaded under an older generation is kept only TIERLAB_AUTH_CACHE_SECONDS.
- **A feed that cannot be read** (the database down) drops everything every poll: entries then live
  at most TIERLAB_AUTH_CACHE_SECONDS, as they did before the feed.

Nothing here is distributed machinery of its own: the rows are ordinary table rows in the one
database every process already uses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from datetime import datetime, timedelta

from django.conf import settings
from django.db import Error as DatabaseFailure
from django.db import connection, transaction

logger = logging.getLogger(__name__)

# How long an id below the largest seen is waited for (see the module docstring): a transaction that
# changes a cached table commits within this time of taking its feed id.
GAP_GRACE_SECONDS = 60.0
# Rows read back at a process's first poll: their ids are marked seen (the caches are empty then) and
# the gaps among them waited for, so a change in flight at start-up is not lost.
FIRST_POLL_LOOKBACK_IDS = 1000
# How long rows are kept (cache_invalidations_prune, hourly): far longer than any process polls apart.
RETENTION = timedelta(hours=1)

# A subscriber is told the teams whose entries to drop, or None: everything.
Subscriber = Callable[[frozenset[int] | None], None]


class _Feed:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self._next_poll = 0.0
        self._high: int | None = None  # the largest id seen; None before the first poll
        self._missing: dict[int, float] = {}  # ids below _high not seen yet -> when first missed
        self.generation = 0  # moved whenever entries are dropped (InvalidatedCache's raced loads)
        self.polls = 0  # polls that read the feed (tests and benchmarks count them)

    def reset(self) -> None:
        with self._lock:
            self._next_poll = 0.0
            self._high = None
            self._missing.clear()

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def apply(self, teams: frozenset[int] | None) -> None:
        """Drop ``teams``' entries (None: every entry) from every subscribed cache."""
        self.generation += 1
        for subscriber in self._subscribers:
            subscriber(teams)

    def interval(self) -> float:
        return settings.TIERLAB_AUTH_CACHE_SECONDS / 3

    def poll(self, *, force: bool = False) -> None:
        """Read the rows added since the last poll and apply them, if a poll is due (``force``: now).
        Cheap when it is not due: a clock read. One thread polls at a time; the others do not wait."""
        now = self._clock()
        if not force and now < self._next_poll:
            return
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._next_poll = now + self.interval()
            self.polls += 1
            try:
                rows = self._read()
            except DatabaseFailure as error:  # DatabaseError, InterfaceError (a closed connection)
                logger.warning("cache invalidation feed unreadable, every cached entry dropped: %s", error)
                self.apply(None)
                return
            self._take(rows, now)
        finally:
            self._lock.release()

    def _read(self) -> Sequence[tuple[int, int | None]]:
        from core.models import CacheInvalidation

        table = connection.ops.quote_name(CacheInvalidation._meta.db_table)
        if self._high is None:
            sql = f"SELECT id, team_id FROM {table} WHERE id > (SELECT COALESCE(MAX(id), 0) - %s FROM {table})"  # noqa: S608 - the table from _meta
            params: list[int] = [FIRST_POLL_LOOKBACK_IDS]
        else:
            sql = f"SELECT id, team_id FROM {table} WHERE id > %s"  # noqa: S608 - the table from _meta
            params = [min(self._missing, default=self._high + 1) - 1]
        # Inside a caller's transaction (tests, a management command) a failed read must not abort it.
        with transaction.atomic() if connection.in_atomic_block else nullcontext(), connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()

    def _take(self, rows: Sequence[tuple[int, int | None]], now: float) -> None:
        found = dict(rows)
        first = self._high is None
        if first:  # the caches are empty: nothing to drop, only where to start and which gaps to wait for
            self._high = min(found, default=1) - 1
        high = self._high
        fresh = [row_id for row_id in found if row_id > high or row_id in self._missing]
        for row_id in fresh:
            self._missing.pop(row_id, None)
        newest = max(found, default=high)
        self._missing.update((row_id, now) for row_id in range(high + 1, newest + 1) if row_id not in found)
        self._high = max(high, newest)
        for row_id, since in list(self._missing.items()):
            if now - since > GAP_GRACE_SECONDS:
                del self._missing[row_id]
        if first or not fresh:
            return
        teams = [found[row_id] for row_id in fresh]
        self.apply(None if None in teams else frozenset(teams))


feed = _Feed()


def cache_invalidations_poll(*, force: bool = False) -> None:
    """Apply the feed's new rows to this process's caches, if a poll is due (``force``: now)."""
    feed.poll(force=force)


def cache_invalidations_apply() -> None:
    """Read the feed now, whether or not a poll is due: after this process committed a change, so it
    sees the change at once (``transaction.on_commit(cache_invalidations_apply)``)."""
    feed.poll(force=True)


def cache_invalidations_reset() -> None:
    """Forget where this process is in the feed (its next read starts again, as a new process's
    does), for tests: SQLite gives a rolled-back transaction's ids again."""
    feed.reset()


def cache_invalidations_subscribe(subscriber: Subscriber) -> None:
    feed.subscribe(subscriber)


def cache_invalidations_prune(*, now: datetime) -> int:
    """Delete the rows older than RETENTION; how many. Beat runs it hourly."""
    from core.models import CacheInvalidation

    deleted, _ = CacheInvalidation.objects.filter(created_at__lt=now - RETENTION).delete()
    return deleted


# --- Triggers -------------------------------------------------------------------------------------------


def _trigger_name(table: str, event: str) -> str:
    return f"tl_invalidate_{table}_{event}"


def invalidation_triggers_sql(
    *, vendor: str, table: str, team_column: str | None, columns: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """The statements that install (and drop) ``table``'s triggers on ``vendor``: a feed row on every
    insert and delete, and on an update that changes one of ``columns`` (any update if there are none),
    with the row's ``team_column`` (None: a row for every team; on PostgreSQL one per statement)."""
    from core.models import CacheInvalidation

    columns = list(columns)
    now = "now()" if vendor == "postgresql" else "STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')"  # as Django's Now()
    insert = f"INSERT INTO {CacheInvalidation._meta.db_table} (team_id, created_at) VALUES"

    def changed(old: str, new: str, distinct: str) -> str:
        return " OR ".join(f"{old}.{c} {distinct} {new}.{c}" for c in columns)

    if vendor == "postgresql":
        function = f"tl_invalidate_{table}"
        if team_column is None:
            body = f"{insert} (NULL, {now});"
            level = "STATEMENT"
        else:
            body = (
                f"IF TG_OP = 'DELETE' THEN {insert} (OLD.{team_column}, {now});"
                f" ELSE {insert} (NEW.{team_column}, {now}); END IF;"
            )
            level = "ROW"
        install = [
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN {body} RETURN NULL; END $$"
        ]
        for event in ("insert", "update", "delete"):
            when = (
                f" WHEN ({changed('OLD', 'NEW', 'IS DISTINCT FROM')})"
                if event == "update" and columns and level == "ROW"
                else ""
            )
            install.append(
                f"CREATE TRIGGER {_trigger_name(table, event)} AFTER {event.upper()} ON {table} "
                f"FOR EACH {level}{when} EXECUTE FUNCTION {function}()"
            )
        drop = [f"DROP TRIGGER IF EXISTS {_trigger_name(table, e)} ON {table}" for e in ("insert", "update", "delete")]
        return install, [*drop, f"DROP FUNCTION IF EXISTS {function}()"]
    install = []
    for event in ("insert", "update", "delete"):
        row = "OLD" if event == "delete" else "NEW"
        team = f"{row}.{team_column}" if team_column else "NULL"
        when = f" WHEN {changed('OLD', 'NEW', 'IS NOT')}" if event == "update" and columns else ""
        install.append(
            f"CREATE TRIGGER {_trigger_name(table, event)} AFTER {event.upper()} ON {table} FOR EACH ROW{when} "
            f"BEGIN {insert} ({team}, {now}); END"
        )
    return install, [f"DROP TRIGGER IF EXISTS {_trigger_name(table, e)}" for e in ("insert", "update", "delete")]


def invalidation_triggers(*, table: str, team_column: str | None, columns: Iterable[str] = ()):
    """A migration operation installing ``invalidation_triggers_sql``'s triggers for the database
    migrated (reversible). A later migration that makes SQLite rebuild ``table`` drops its triggers:
    install them again after it (tests/core/test_invalidation.py checks every cached table has them)."""
    from django.db import migrations

    columns = tuple(columns)

    def run(schema_editor, which: int) -> None:
        statements = invalidation_triggers_sql(
            vendor=schema_editor.connection.vendor, table=table, team_column=team_column, columns=columns
        )[which]
        with schema_editor.connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)

    return migrations.RunPython(
        lambda apps, schema_editor: run(schema_editor, 0), lambda apps, schema_editor: run(schema_editor, 1)
    )
