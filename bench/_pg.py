"""A scratch PostgreSQL database for one bench run (bench scripts' ``--database-url``).

The URL names a server and a role (which needs CREATEDB, as CI's and the README's roles have); the
bench creates a database of its own there, ``<database in the URL>_<label>_<pid>``, and drops it when
done, so a run never writes into the database the URL names (a developer's, or CI's), and two runs
side by side do not meet. The database in the URL is only connected to, for CREATE/DROP DATABASE
(the server's maintenance database ``postgres`` if that one does not exist).

Needs psycopg, from the project's virtualenv.
"""

from __future__ import annotations

import os
import sys
import urllib.parse
from collections.abc import Callable


def is_postgres(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://", "pgsql://"))


def _admin_connect(url: str):
    import psycopg

    parts = urllib.parse.urlsplit(url)
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError:
        maintenance = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
        return psycopg.connect(maintenance, autocommit=True, connect_timeout=10)


def scratch_database(url: str, label: str) -> tuple[str, Callable[[], None]]:
    """Create an empty database for this run on ``url``'s server; returns (its URL, drop)."""
    parts = urllib.parse.urlsplit(url)
    base = parts.path.lstrip("/") or "tierlab"
    name = f"{base}_{label}_{os.getpid()}"[:63]  # PostgreSQL truncates identifiers at 63 bytes
    with _admin_connect(url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    dropped = []

    def drop() -> None:
        if dropped:
            return
        dropped.append(True)
        try:
            with _admin_connect(url) as conn:
                # WITH (FORCE): a server process the bench could not stop must not keep the database alive.
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception as error:  # the run's result stands; say what is left behind
            print(f"could not drop the bench database {name}: {error}", file=sys.stderr, flush=True)

    return urllib.parse.urlunsplit(parts._replace(path="/" + name)), drop
