"""A run's own databases: one per shard, never the platform's.

SQLite (the default): a copy of a template file migrated once per set of migrations
(``var/simulations/.schema/<digest>.sqlite3``; migrating takes seconds, copying milliseconds), in
the run's work folder. PostgreSQL (``server_url`` given: the bench's ``--database-url``, or the
platform's own server for shards run by Celery workers): a database per shard named for the run,
``tierlab_sim_<run>_<shard>``, created from a template database migrated once per set of migrations
(``tierlab_sim_tpl_<digest>``) and dropped when the run is over. The role needs CREATEDB.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import connections

SIMULATIONS_DIR = Path(settings.VAR_DIR) / "simulations"


class DatabaseSetupFailed(Exception):
    pass


def migrations_digest() -> str:
    """A digest of every migration file of the project and of the versions of the installed packages
    that ship migrations (Django, allauth, django-celery-beat): a new migration means a new template."""
    import allauth
    import django
    import django_celery_beat

    digest = hashlib.sha256(f"{django.__version__} {allauth.__version__} {django_celery_beat.__version__}".encode())
    for path in sorted(Path(settings.BASE_DIR).glob("*/migrations/*.py")):
        digest.update(str(path.relative_to(settings.BASE_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def child_env(database_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process of the run: config.settings_simulation, the run's database only."""
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "config.settings_simulation"
    env["TIERLAB_SIMULATION_DATABASE_URL"] = database_url
    env.pop("DATABASE_URL", None)
    env.update(extra or {})
    return env


def manage(*args: str) -> list[str]:
    return [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), *args]


def _migrate(database_url: str) -> None:
    completed = subprocess.run(  # noqa: S603 - our own manage.py
        manage("migrate", "--no-input", "-v0"),
        env=child_env(database_url),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if completed.returncode != 0:
        raise DatabaseSetupFailed(f"migrating a simulation template failed:\n{completed.stderr[-3000:]}")


def sqlite_template() -> Path:
    """A migrated, empty SQLite database to copy for each shard (made once per set of migrations)."""
    folder = SIMULATIONS_DIR / ".schema"
    template = folder / f"{migrations_digest()}.sqlite3"
    if template.exists():
        return template
    folder.mkdir(parents=True, exist_ok=True)
    building = folder / f".{template.stem}-{uuid.uuid4().hex[:8]}.sqlite3"
    try:
        _migrate(f"sqlite:///{building}")
        os.replace(building, template)  # atomic: a concurrent run sees a whole template or none
    finally:
        building.unlink(missing_ok=True)
    return template


# --- PostgreSQL -------------------------------------------------------------------------------------------


def postgres_server_of_settings() -> str | None:
    """A URL of the platform database's PostgreSQL server (its role and database), or None on SQLite."""
    db = settings.DATABASES["default"]
    if connections["default"].vendor != "postgresql":  # Django's engine or core.db.postgresql
        return None
    credentials = urllib.parse.quote(db.get("USER") or "", safe="")
    if db.get("PASSWORD"):
        credentials += ":" + urllib.parse.quote(db["PASSWORD"], safe="")
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{credentials}@{db.get('HOST') or ''}{port}/{urllib.parse.quote(db['NAME'], safe='')}"


def database_url_on(server_url: str, name: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(server_url)._replace(path="/" + name))


def _admin(server_url: str):
    import psycopg

    try:
        return psycopg.connect(server_url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError:
        return psycopg.connect(database_url_on(server_url, "postgres"), autocommit=True, connect_timeout=10)


def _exists(conn, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def postgres_template(server_url: str) -> str:
    """The name of a migrated template database on the server (made once per set of migrations)."""
    name = f"tierlab_sim_tpl_{migrations_digest()}"
    with _admin(server_url) as conn:
        if _exists(conn, name):
            return name
        building = f"{name}_{uuid.uuid4().hex[:8]}"
        conn.execute(f'CREATE DATABASE "{building}"')
    try:
        _migrate(database_url_on(server_url, building))
        with _admin(server_url) as conn:
            if not _exists(conn, name):
                conn.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
    finally:
        with _admin(server_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
    return name


# --- A shard's database ------------------------------------------------------------------------------------


@dataclass
class ShardDatabase:
    url: str
    label: str  # a SQLite file's path, or a PostgreSQL database's name
    drop: Callable[[], None]


def shard_database_create(*, work: Path, run_label: str, index: int, server_url: str | None = None) -> ShardDatabase:
    if server_url is None:
        target = work / f"shard-{index}.sqlite3"
        shutil.copyfile(sqlite_template(), target)
        return ShardDatabase(url=f"sqlite:///{target}", label=str(target), drop=lambda: target.unlink(missing_ok=True))
    template = postgres_template(server_url)
    name = f"tierlab_sim_{run_label}_{index}"[:63]
    with _admin(server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')

    def drop() -> None:
        with _admin(server_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return ShardDatabase(url=database_url_on(server_url, name), label=name, drop=drop)
