"""Which dependency an exception says is down: the database, the cache, the broker or Redis.

A request that fails because a part it depends on cannot answer (the database refuses connections or
writes, the cache's Redis is down, the broker's disk is full) is not a bug of the request: the APIs
answer 503 with ``Retry-After`` in their JSON error shape, and pages a short 503 page, instead of a
500 (core/api.py, core/middleware.py). Anything else stays a 500: a schema error, an integrity error
or a programming error is a bug, and retrying it would not help.

Classified by the driver's own error codes, not by message text:
- SQLite (Python's ``sqlite3`` exceptions carry ``sqlite_errorcode``): the file cannot be opened,
  written (read-only), grown (disk full), locked or read (I/O error). "no such table" is a plain
  SQLITE_ERROR: a bug (or a missing migration), not an outage.
- PostgreSQL (psycopg errors carry ``sqlstate``): connection exceptions (08), insufficient resources
  (53: disk full, out of memory, too many connections), operator intervention (57: shutdown, cannot
  connect now), system errors (58), and a read-only transaction (25006: a standby, or
  ``default_transaction_read_only``). A refused connection has no sqlstate: Django raises it as an
  OperationalError, which counts as unavailable.
- Redis (redis-py's ConnectionError and TimeoutError, BusyLoadingError while it loads its AOF): the
  cache when the failing call came from Django's cache framework, otherwise Redis itself.
- The broker: kombu's OperationalError (Celery could not publish).
"""

from __future__ import annotations

import sqlite3
import traceback
from dataclasses import dataclass

from django.db import utils as db_utils
from kombu.exceptions import OperationalError as BrokerOperationalError

try:  # redis-py is a requirement, but the classification must not depend on it being importable
    from redis import exceptions as redis_exceptions
except ImportError:  # pragma: no cover
    redis_exceptions = None

# How long a client should wait before retrying (Retry-After): a restarting database or Redis is
# usually back within seconds; a longer outage is answered again with the same advice.
RETRY_AFTER_SECONDS = 5

# SQLite primary result codes (the low byte of the extended code) that mean the file, not the query.
_SQLITE_UNAVAILABLE = {
    3: "SQLITE_PERM",
    5: "SQLITE_BUSY",
    6: "SQLITE_LOCKED",
    7: "SQLITE_NOMEM",
    8: "SQLITE_READONLY",
    10: "SQLITE_IOERR",
    13: "SQLITE_FULL",
    14: "SQLITE_CANTOPEN",
    15: "SQLITE_PROTOCOL",
}
_PG_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")
_PG_READ_ONLY = "25006"


@dataclass(frozen=True)
class DependencyFailure:
    """A dependency that could not answer: ``part`` names it (``database``, ``cache``, ``broker``,
    ``redis``), ``code`` is the API error code, ``message`` says what the client sees."""

    part: str
    code: str
    message: str
    retry_after: int = RETRY_AFTER_SECONDS


_MESSAGES = {
    "database": "The database is unavailable. Retry in a few seconds.",
    "cache": "The cache is unavailable. Retry in a few seconds.",
    "broker": "The task queue is unavailable. Retry in a few seconds.",
    "redis": "A backing service (Redis) is unavailable. Retry in a few seconds.",
}


def _failure(part: str) -> DependencyFailure:
    return DependencyFailure(part=part, code=f"{part}_unavailable", message=_MESSAGES[part])


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (Django wraps driver errors: ``__cause__``)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _database_unavailable(exc: BaseException) -> bool:
    if not isinstance(exc, db_utils.DatabaseError):
        return False
    for cause in _causes(exc):
        if isinstance(cause, sqlite3.Error) and getattr(cause, "sqlite_errorcode", None) is not None:
            return (cause.sqlite_errorcode & 0xFF) in _SQLITE_UNAVAILABLE
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str) and len(sqlstate) == 5:
            return sqlstate == _PG_READ_ONLY or sqlstate.startswith(_PG_UNAVAILABLE_CLASSES)
    # No driver code (e.g. psycopg's "connection refused", a closed connection): an outage.
    return isinstance(exc, db_utils.OperationalError | db_utils.InterfaceError)


def _redis_unavailable(exc: BaseException) -> bool:
    if redis_exceptions is None:  # pragma: no cover
        return False
    return isinstance(exc, redis_exceptions.ConnectionError | redis_exceptions.TimeoutError)


def _raised_by_cache(exc: BaseException) -> bool:
    """True if the call that failed went through Django's cache framework (django.core.cache)."""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        if frame.f_globals.get("__name__", "").startswith("django.core.cache"):
            return True
    return False


def dependency_failure(exc: BaseException) -> DependencyFailure | None:
    """The dependency ``exc`` says is down, or None if ``exc`` is not an outage (a bug: answer 500)."""
    if _database_unavailable(exc):
        return _failure("database")
    if isinstance(exc, BrokerOperationalError):
        return _failure("broker")
    if _redis_unavailable(exc):
        return _failure("cache" if _raised_by_cache(exc) else "redis")
    return None
