"""The database quota backend under the threads of one server process (issue 17: granian serves each
worker's requests on 16 threads, which all wait for the same team's row).

On PostgreSQL an admitted consume or reserve is one statement (usage/quotas/database.py). Under
threads it used to lose the race for the team's row whenever another step of the team committed
while it waited, and then took the transactional path (three to five statements more): 1.83 SQL
writes per request for one team. These tests count the statements each step ran (Django's execute
wrapper, on the thread's own connection) and check that exactness held: exactly the quota admitted,
counters equal to records, no request recorded twice.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
from django.db import connection, connections, transaction
from django.db.models import Count

from accounts.models import Team
from accounts.services import api_key_create, team_create_personal
from tests.factories import UserFactory
from tests.usage.test_quota_contract import NOW, RPD, event_for, limits_at, records_of
from usage.models import TeamQuotaState, UsageRecord
from usage.quotas.base import Decision
from usage.quotas.database import DatabaseQuotaBackend

THREADS = 32


@pytest.fixture
def team(transactional_db: None) -> Team:
    # Committed rows: the threads have connections of their own.
    return team_create_personal(user=UserFactory())


@pytest.fixture
def postgresql() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only (the one-statement consume): set DATABASE_URL to a PostgreSQL server")


@contextmanager
def statements_run() -> Iterator[list[str]]:
    """The SQL statements this thread's connection runs inside the block."""
    seen: list[str] = []

    def wrapper(execute: Callable, sql: str, params: object, many: bool, context: dict) -> object:
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield seen


def hammer(threads: int, steps: int, step: Callable[[int, int], Decision]) -> list[tuple[Decision, list[str]]]:
    """``threads`` threads released at once, each running ``step(thread, n)`` for n < ``steps``; every
    step's decision with the statements it ran."""
    start = threading.Barrier(threads)
    results: list[tuple[Decision, list[str]]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        try:
            start.wait(timeout=30)
            for n in range(steps):
                with statements_run() as seen:
                    decision = step(number, n)
                with lock:
                    results.append((decision, seen))
        except BaseException as error:
            with lock:
                errors.append(error)
        finally:
            connection.close()

    workers = [threading.Thread(target=client, args=(number,)) for number in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=180)
    assert not [worker for worker in workers if worker.is_alive()]
    assert errors == []
    assert len(results) == threads * steps
    return results


def consume(backend: DatabaseQuotaBackend, team: Team, request_id: str, *, new: bool, limits=None) -> Decision:
    return backend.consume(
        team_id=team.id, request_id=request_id, limits=limits or limits_at(NOW, rpm=100_000, rpd=100_000),
        tokens=100, now=NOW, event=event_for(team, request_id, tokens=40), request_id_is_new=new,
    )  # fmt: skip


def assert_counters_equal_records(team: Team, count: int, tokens: int) -> None:
    assert records_of(team) == (count, tokens)
    state = TeamQuotaState.objects.get(team=team)
    assert (state.day_requests, state.minute_requests, state.period_tokens) == (count, count, tokens)
    twice = UsageRecord.objects.filter(team=team).values("request_key").annotate(n=Count("id")).filter(n__gt=1)
    assert list(twice) == []


# --- exactness under threads (SQLite and PostgreSQL) ------------------------------------------------------


def test_threads_racing_for_a_100_requests_a_day_key_admit_exactly_100_and_record_each_once(team):
    backend = DatabaseQuotaBackend()
    limits = limits_at(NOW, rpm=100_000, rpd=100)

    def step(number: int, n: int) -> Decision:
        # Mixed as a server sees them: ids generated for the request, clients' ids, and streams
        # (reserve, then settle).
        new = n % 2 == 0
        request_id = f"req_{uuid.uuid4().hex}" if new else f"t{number}-{n}"
        if n % 4 < 2:
            return consume(backend, team, request_id, new=new, limits=limits)
        decision = backend.reserve(
            team_id=team.id, request_id=request_id, limits=limits, tokens=100, now=NOW, request_id_is_new=new
        )
        if decision.reservation is not None:
            assert backend.settle(reservation=decision.reservation, event=event_for(team, request_id, tokens=40))
        return decision

    results = hammer(THREADS, 8, step)  # 256 requests for 100
    decisions = [decision for decision, _ in results]
    assert sum(d.allowed for d in decisions) == 100
    assert {d.denied for d in decisions if not d.allowed} == {RPD}
    assert_counters_equal_records(team, 100, 100 * 40)


# --- the contention fix (PostgreSQL) ------------------------------------------------------------------------


@pytest.mark.parametrize("new", [True, False], ids=["generated_ids", "client_ids"])
def test_threads_hammering_one_team_take_one_statement_per_admitted_request(postgresql, team, new):
    backend = DatabaseQuotaBackend()
    consume(backend, team, "first", new=False)  # the team's first request creates its row (more statements)

    def step(number: int, n: int) -> Decision:
        return consume(backend, team, f"req_{uuid.uuid4().hex}" if new else f"c{number}-{n}", new=new)

    results = hammer(THREADS, 8, step)
    assert all(decision.allowed and not decision.duplicate for decision, _ in results)
    # One statement each (the code before took the transactional path, UPDATE + INSERT, for most of
    # these): a generated id's statement has no race to lose, and a client id's statements of one team
    # run one at a time in a process, so none waited for the row while another committed.
    per_step = Counter(len(seen) for _, seen in results)
    assert per_step == {1: THREADS * 8}
    assert all(seen[0].startswith("WITH q AS") for _, seen in results)
    assert_counters_equal_records(team, THREADS * 8 + 1, (THREADS * 8 + 1) * 40)


def _waiting_for_a_lock(pid: int) -> bool:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return row is not None and row[0] == "Lock"


def test_a_consume_that_lost_the_race_for_the_row_runs_its_one_statement_again(postgresql, team):
    # Another process's step of the team holds the row; this step waits in its one statement, whose
    # snapshot predates the other's commit, so it must not insert (it could miss a reservation holding
    # the id) and it runs again rather than take the transactional path.
    backend = DatabaseQuotaBackend()
    consume(backend, team, "first", new=False)
    committed, outcome = threading.Event(), {}

    def other_step() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {TeamQuotaState._meta.db_table} SET minute_tokens = minute_tokens WHERE team_id = %s",  # noqa: S608
                    [team.id],
                )
                outcome["other"] = connection.connection.info.backend_pid
                committed.wait(timeout=30)
        finally:
            connection.close()

    def this_step() -> None:
        try:
            connection.ensure_connection()
            outcome["pid"] = connection.connection.info.backend_pid
            with statements_run() as seen:
                outcome["decision"] = consume(backend, team, "raced", new=False)
            outcome["statements"] = seen
        finally:
            connection.close()

    holder = threading.Thread(target=other_step)
    holder.start()
    deadline = time.monotonic() + 30
    while "other" not in outcome and time.monotonic() < deadline:
        time.sleep(0.01)
    waiter = threading.Thread(target=this_step)
    waiter.start()
    while not (outcome.get("pid") and _waiting_for_a_lock(outcome["pid"])) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _waiting_for_a_lock(outcome["pid"])
    committed.set()
    holder.join(timeout=30)
    waiter.join(timeout=30)

    assert outcome["decision"].allowed and not outcome["decision"].duplicate
    assert len(outcome["statements"]) == 2  # lost the race once, then admitted: no transactional path
    assert all(sql.startswith("WITH q AS") for sql in outcome["statements"])
    assert_counters_equal_records(team, 2, 80)


def test_a_consume_of_a_generated_id_moves_the_keys_last_used_time_in_its_one_statement(postgresql, team):
    key, _secret = api_key_create(team=team, name="k")
    backend = DatabaseQuotaBackend()
    consume(backend, team, "first", new=False)
    event = replace(event_for(team, "req_generated", tokens=40), api_key_id=key.id)
    with statements_run() as seen:
        decision = backend.consume(
            team_id=team.id, request_id="req_generated", limits=limits_at(NOW, rpm=10, rpd=10), tokens=100,
            now=NOW, event=event, request_id_is_new=True,
        )  # fmt: skip
    assert decision.allowed and len(seen) == 1
    key.refresh_from_db()
    assert key.last_used_at == NOW
    assert_counters_equal_records(team, 2, 80)
