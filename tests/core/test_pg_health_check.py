"""core.db.postgresql: the kept connection's health check without a round trip (issue 17).

Each test keeps the connection between requests (CONN_MAX_AGE 60, as production does; the test
settings use 0), makes the server end the session between two requests, and asks the second request
to succeed. The server ends the session for real: another connection runs pg_terminate_backend, or
the session's own idle_session_timeout fires.
"""

from __future__ import annotations

import time

import psycopg
import pytest
from django.db import close_old_connections, connection, connections

from core.db.postgresql.base import DatabaseWrapper
from tests.factories import SubscriberFactory

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the socket health check is PostgreSQL's"),
    pytest.mark.django_db(transaction=True),  # autocommit between requests, as in production
]


@pytest.fixture
def kept_connection():
    """The connection kept across requests, with Django's health checks on (or off, by the test)."""
    wrapper = connections["default"]
    saved = {key: wrapper.settings_dict[key] for key in ("CONN_MAX_AGE", "CONN_HEALTH_CHECKS")}
    wrapper.close()
    wrapper.settings_dict.update(CONN_MAX_AGE=60, CONN_HEALTH_CHECKS=True)
    yield wrapper
    wrapper.close()
    wrapper.settings_dict.update(saved)


@pytest.fixture
def round_trip_checks(kept_connection, monkeypatch):
    """How many times the health check fell back to Django's SELECT 1 (is_usable): a spy that counts
    the calls and runs the real check."""
    calls = []
    real = type(kept_connection).is_usable

    def counted(self):
        calls.append(self.connection.info.backend_pid if self.connection else None)
        return real(self)

    monkeypatch.setattr(type(kept_connection), "is_usable", counted)
    return calls


@pytest.fixture
def signed_in(client, catalog):
    client.force_login(SubscriberFactory(email="kept@example.com"))
    return client


def _get(client, path: str):
    """One request as a WSGI server runs it. Django's handler sends request_started and
    request_finished, whose receiver close_old_connections arms the next health check and closes a
    connection past CONN_MAX_AGE; the test client disconnects that receiver, so it is called here."""
    close_old_connections()
    try:
        return client.get(path)
    finally:
        close_old_connections()


def _backend_pid() -> int:
    return connection.connection.info.backend_pid


def _terminate(pid: int) -> None:
    """End backend ``pid`` from another connection and wait until it is gone, as a restart or an
    operator's pg_terminate_backend would."""
    params = connection.get_connection_params()
    with psycopg.connect(**{**params, "autocommit": True}) as other:
        assert other.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
        deadline = time.monotonic() + 10
        while other.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
            assert time.monotonic() < deadline, f"backend {pid} still running"
            time.sleep(0.02)


def test_the_postgresql_engine_is_ours():
    assert isinstance(connections["default"], DatabaseWrapper)


def test_a_healthy_kept_connection_is_reused_without_a_round_trip(signed_in, round_trip_checks):
    assert _get(signed_in, "/api/v1/me").status_code == 200
    pid = _backend_pid()
    for _ in range(3):
        assert _get(signed_in, "/api/v1/me").status_code == 200
    assert _backend_pid() == pid  # the same session served every request
    assert round_trip_checks == []  # and no request paid Django's SELECT 1


def test_a_request_after_the_backend_was_terminated_succeeds_on_a_new_connection(signed_in, round_trip_checks):
    assert _get(signed_in, "/api/v1/me").status_code == 200
    pid = _backend_pid()
    _terminate(pid)
    response = _get(signed_in, "/api/v1/me")
    assert response.status_code == 200, response.content
    assert response.json()["email"] == "kept@example.com"
    assert _backend_pid() != pid  # replaced
    assert round_trip_checks == [pid]  # the socket showed the server's goodbye: one SELECT 1, which failed


def test_a_request_after_the_idle_session_timeout_succeeds(signed_in, round_trip_checks):
    assert _get(signed_in, "/api/v1/me").status_code == 200
    pid = _backend_pid()
    with connection.cursor() as cursor:  # PostgreSQL 14+: the server ends a session idle this long
        cursor.execute("SET idle_session_timeout = 100")
    time.sleep(0.5)
    assert _get(signed_in, "/api/v1/me").status_code == 200
    assert _backend_pid() != pid
    assert round_trip_checks == [pid]


def test_without_health_checks_the_same_termination_fails_the_request(signed_in, kept_connection):
    """The control: the scenario above really breaks a request when nothing checks the connection."""
    kept_connection.settings_dict["CONN_HEALTH_CHECKS"] = False
    kept_connection.close()
    assert _get(signed_in, "/api/v1/me").status_code == 200
    _terminate(_backend_pid())
    response = _get(signed_in, "/api/v1/me")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"


def test_a_connection_inside_a_transaction_is_not_called_quiet(kept_connection):
    kept_connection.ensure_connection()
    assert kept_connection.connection_is_quiet()
    kept_connection.set_autocommit(False)
    try:
        with kept_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        assert not kept_connection.connection_is_quiet()  # a transaction is open: unsure, so a round trip
    finally:
        kept_connection.rollback()
        kept_connection.set_autocommit(True)
