"""simulation.databases: which server a simulation's scratch databases go to."""

from __future__ import annotations

import urllib.parse

from django.conf import settings
from django.db import connection

from simulation.databases import postgres_server_of_settings


def test_the_platform_databases_server_is_found_whichever_postgresql_engine_serves_it():
    """On PostgreSQL, with Django's engine or core.db.postgresql (CONN_HEALTH_CHECK), the URL of the
    platform database's server; on SQLite none (simulations then use SQLite files)."""
    url = postgres_server_of_settings()
    if connection.vendor != "postgresql":
        assert url is None
        return
    db = settings.DATABASES["default"]
    parts = urllib.parse.urlsplit(url)
    assert (parts.scheme, parts.hostname, parts.username) == ("postgres", db["HOST"], db["USER"])
    assert urllib.parse.unquote(parts.path[1:]) == db["NAME"]
