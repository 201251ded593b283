"""Django's PostgreSQL engine with a health check that costs no round trip when nothing is wrong.

With ``CONN_MAX_AGE`` > 0 a web process keeps its connection between requests, and
``CONN_HEALTH_CHECKS`` makes Django check it before the first query of each request, so that a
connection the server dropped meanwhile (a PostgreSQL restart, ``idle_session_timeout``, a
terminated backend, a proxy's idle kill) is replaced instead of failing that request. Django checks
with ``SELECT 1``: a full round trip on every request that touches the database, measured (issue 17)
at about a fifth of the client CPU of the model API's one cold read.

Here the check first asks the connection's socket, without waiting (``poll`` with timeout 0),
whether anything arrived since the last result. Between requests the protocol is quiet: the server
sends nothing unprompted to an idle session except when it ends it (a ``FATAL`` error message, then
end of file) or for LISTEN/NOTIFY and parameter changes, which TierLab does not use. So:

- the socket has nothing to read and libpq reports the connection OK and idle (no transaction
  open): the connection is healthy as far as anything short of a round trip can tell; no query;
- anything else (data or end of file waiting, a transaction left open, a status other than OK, a
  socket libpq no longer has): Django's ``SELECT 1``, which decides as before.

Even if libpq happened to read the ``FATAL`` message into its own buffer along with the previous
result, the end of file behind it stays in the kernel until libpq reads again, and polls readable.

What this does not see, and neither does ``SELECT 1`` usefully: a server that vanished without
closing the TCP connection (a host power loss, a network partition) shows nothing on the socket;
Django's ``SELECT 1`` would wait for the kernel's TCP timeout there, and the request's own first
query waits and fails the same way. Keepalives (``OPTIONS`` ``keepalives_idle``) bound that case.

``is_usable`` itself (Django's ``SELECT 1``) is unchanged: Django also calls it after a database
error in a request, where a round trip is the right test. With a connection pool (``OPTIONS``
``{"pool": ...}``) Django skips the health check and this engine changes nothing.
"""

from __future__ import annotations

import select

import psycopg
from django.db.backends.postgresql.base import DatabaseWrapper as PostgreSQLDatabaseWrapper
from psycopg import pq


class DatabaseWrapper(PostgreSQLDatabaseWrapper):
    def close_if_health_check_failed(self) -> None:
        if self.connection is None or self.pool or not self.health_check_enabled or self.health_check_done:
            return
        if not self.connection_is_quiet() and not self.is_usable():
            self.close()
        self.health_check_done = True

    def connection_is_quiet(self) -> bool:
        """True when the open connection is idle and its socket has nothing to read: no sign that the
        server ended the session. False when unsure (the caller then checks with a round trip)."""
        raw = self.connection
        if raw is None or raw.closed:
            return False
        pgconn = raw.pgconn
        if pgconn.status != pq.ConnStatus.OK or pgconn.transaction_status != pq.TransactionStatus.IDLE:
            return False
        try:
            # poll, not select: select refuses descriptors above 1023, which a busy process may hold.
            poller = select.poll()
            poller.register(pgconn.socket, select.POLLIN)
            events = poller.poll(0)  # POLLIN on data or end of file; POLLHUP/POLLERR always reported
        except (OSError, ValueError, psycopg.OperationalError):
            return False
        return not events
