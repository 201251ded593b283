"""Reservations that are never settled, one-transaction consume, Redis deadlines and request ids from an
earlier version: the quota backends' answers to issue 11 (a-c) and issue 12 (items 2, 3, 5), at the
backend level. Over HTTP and with real faults (a stopped Redis, a killed process): tests/faults/.

The contract suite's fixtures and helpers (tests/usage/test_quota_contract.py) are reused: both backends,
a real redis-server, explicit time.
"""

# ruff: noqa: F811 - the contract suite's fixtures, imported, are test parameters here
from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import DatabaseError, connection

from tests.usage.test_quota_contract import (  # noqa: F401 - fixtures: backend, redis_quota, team
    MONTHLY,
    NOW,
    RPD,
    RPM,
    TPM,
    admit,
    backend,
    drained,
    event_for,
    limits_at,
    records_of,
    redis_quota,
    team,
)
from usage.models import QuotaReservation, UsageRecord
from usage.quotas.base import QuotaBackendUnavailable
from usage.quotas.database import DatabaseQuotaBackend
from usage.quotas.redis import RedisQuotaBackend
from usage.services import usage_records_create, usage_request_ids_release


@pytest.fixture
def timeout(settings) -> timedelta:
    settings.TIERLAB_RESERVATION_TIMEOUT_SECONDS = 300
    return timedelta(seconds=300)


def pending_reservations(backend) -> int:
    if isinstance(backend, RedisQuotaBackend):
        return backend.client.zcard(backend.reservations)
    return QuotaReservation.objects.count()


# --- the sweeper (issue 12, items 2 and 3) ----------------------------------------------------------------


def test_a_reservation_never_settled_is_refunded_after_the_timeout_and_its_id_freed(backend, team, timeout):
    limits = limits_at(NOW, rpm=5, tpm=10_000, rpd=50, monthly=100_000)
    assert admit(backend, team, limits, tokens=100, actual=60).allowed
    before = backend.used(team_id=team.id, limits=limits)
    # Admitted, then its process died: never settled, never refunded.
    crashed = backend.reserve(
        team_id=team.id, request_id="crash-stream-1", limits=limits, tokens=200, now=NOW, request_hash="a"
    )
    assert crashed.allowed and pending_reservations(backend) == 1
    assert backend.reserve(
        team_id=team.id, request_id="crash-stream-1", limits=limits, tokens=200, now=NOW, request_hash="a"
    ).in_progress

    assert backend.sweep(now=NOW + timeout - timedelta(seconds=1)) == 0  # not abandoned yet
    assert backend.sweep(now=NOW + timeout + timedelta(seconds=1)) == 1
    assert backend.sweep(now=NOW + timeout + timedelta(seconds=1)) == 0  # given back once
    assert backend.used(team_id=team.id, limits=limits) == before
    assert pending_reservations(backend) == 0

    # The id is free again: a retry is a new request, counted and recorded once.
    retried = admit(backend, team, limits, tokens=200, actual=160, request_id="crash-stream-1", request_hash="a")
    assert retried.allowed and not retried.duplicate
    assert admit(backend, team, limits, request_id="crash-stream-1", request_hash="a").duplicate
    drained(backend)
    count, tokens = records_of(team)
    used = backend.used(team_id=team.id, limits=limits)
    assert (count, tokens) == (2, 220) == (used[RPD], used[MONTHLY])


def test_a_settle_after_the_sweep_changes_nothing(backend, team, timeout):
    limits = limits_at(NOW, rpm=5)
    slow = backend.reserve(team_id=team.id, request_id="slow", limits=limits, tokens=100, now=NOW, request_hash="a")
    assert backend.sweep(now=NOW + 2 * timeout) == 1

    assert backend.settle(reservation=slow.reservation, event=event_for(team, "slow", tokens=80)) is False

    assert backend.used(team_id=team.id, limits=limits) == {RPM: 0, TPM: 0, RPD: 0, MONTHLY: 0}
    drained(backend)
    assert records_of(team) == (0, 0)


def test_the_sweeper_refunds_only_what_is_older_than_the_timeout(backend, team, timeout):
    limits = limits_at(NOW, rpm=50)
    old = [backend.reserve(team_id=team.id, request_id=f"old-{n}", limits=limits, tokens=10, now=NOW) for n in range(3)]
    later = NOW + timedelta(seconds=20)  # the same minute
    fresh = backend.reserve(team_id=team.id, request_id="fresh", limits=limits_at(later, rpm=50), tokens=10, now=later)
    assert all(d.allowed for d in [*old, fresh])

    assert backend.sweep(now=NOW + timeout + timedelta(seconds=1)) == 3
    assert pending_reservations(backend) == 1
    assert backend.settle(reservation=fresh.reservation, event=event_for(team, "fresh", tokens=7, now=later))
    assert backend.used(team_id=team.id, limits=limits) == {RPM: 1, TPM: 7, RPD: 1, MONTHLY: 7}


# --- the database backend: every step one transaction (issue 12, item 5) --------------------------------


@pytest.fixture
def record_inserts_fail(team):
    """Every insert into the usage records fails, as on a full disk (a trigger: a real database error
    in the middle of the step's transaction, not a patched function)."""
    table = UsageRecord._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION tl_test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full';"
                " END $$"
            )
            cursor.execute(
                f"CREATE TRIGGER tl_test_disk_full BEFORE INSERT ON {table}"
                " FOR EACH ROW EXECUTE FUNCTION tl_test_disk_full()"
            )
        else:
            cursor.execute(
                f"CREATE TRIGGER tl_test_disk_full BEFORE INSERT ON {table}"
                " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
    yield
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TRIGGER tl_test_disk_full{' ON ' + table if connection.vendor == 'postgresql' else ''}")
        if connection.vendor == "postgresql":
            cursor.execute("DROP FUNCTION tl_test_disk_full()")


def test_database_consume_that_cannot_record_counts_nothing(team, record_inserts_fail):
    backend = DatabaseQuotaBackend()
    limits = limits_at(NOW, rpm=100, rpd=100)
    for number in range(12):
        with pytest.raises((QuotaBackendUnavailable, DatabaseError)):
            backend.consume(
                team_id=team.id, request_id=f"full-{number}", limits=limits, tokens=100, now=NOW,
                event=event_for(team, f"full-{number}", tokens=80),
            )  # fmt: skip
    assert backend.used(team_id=team.id, limits=limits) == {RPM: 0, TPM: 0, RPD: 0, MONTHLY: 0}
    assert records_of(team) == (0, 0)


def test_database_settle_that_cannot_record_leaves_the_reservation_to_the_sweeper(team, timeout, request):
    backend = DatabaseQuotaBackend()
    limits = limits_at(NOW, rpm=100)
    decision = backend.reserve(team_id=team.id, request_id="stream", limits=limits, tokens=100, now=NOW)
    request.getfixturevalue("record_inserts_fail")
    with pytest.raises((QuotaBackendUnavailable, DatabaseError)):
        backend.settle(reservation=decision.reservation, event=event_for(team, "stream", tokens=80))
    # Rolled back as a whole: still reserved (100 tokens), nothing recorded, the reservation kept.
    assert backend.used(team_id=team.id, limits=limits) == {RPM: 1, TPM: 100, RPD: 1, MONTHLY: 100}
    assert pending_reservations(backend) == 1

    assert backend.sweep(now=NOW + timeout + timedelta(seconds=1)) == 1
    assert backend.used(team_id=team.id, limits=limits) == {RPM: 0, TPM: 0, RPD: 0, MONTHLY: 0}
    assert records_of(team) == (0, 0)


# --- request ids past the retention (issue 11, b) ----------------------------------------------------------


def test_the_release_task_frees_ids_older_than_the_retention(team, settings):
    settings.TIERLAB_REQUEST_ID_RETENTION_SECONDS = 3600
    usage_records_create(events=[event_for(team, "old", tokens=10, now=NOW - timedelta(hours=2))])
    usage_records_create(events=[event_for(team, "new", tokens=10, now=NOW - timedelta(minutes=10))])

    assert usage_request_ids_release(now=NOW) == 1
    assert usage_request_ids_release(now=NOW) == 0
    assert dict(UsageRecord.objects.values_list("request_id", "request_key")) == {"old": None, "new": "new"}


def test_the_drain_stores_a_reused_id_as_a_new_record_and_a_redelivery_as_nothing(team):
    first = event_for(team, "again", tokens=10, now=NOW - timedelta(days=2))
    assert usage_records_create(events=[first]) == 1
    # The id used again after the retention (Redis forgot it): a new record, which takes the id over.
    second = event_for(team, "again", tokens=20, now=NOW)
    assert usage_records_create(events=[second]) == 1
    assert usage_records_create(events=[first, second]) == 0  # a re-delivered batch
    assert dict(UsageRecord.objects.values_list("total_tokens", "request_key")) == {10: None, 20: "again"}

    # Two uses of one id in one batch: both stored, the later one holds it.
    third, fourth = (event_for(team, "twice", tokens=t, now=NOW + timedelta(seconds=t)) for t in (3, 4))
    assert usage_records_create(events=[fourth, third]) == 2
    assert usage_records_create(events=[fourth, third]) == 0
    assert records_of(team) == (4, 37)
    assert UsageRecord.objects.get(request_key="twice").total_tokens == 4


# --- Redis: deadlines, NOSCRIPT, ids of an earlier version (issue 12 item 2, issue 11 c) -------------------


def test_redis_script_run_after_its_deadline_changes_nothing_and_a_wrong_clock_costs_one_call(redis_quota, team):
    limits = limits_at(NOW, rpm=5, tpm=10_000, rpd=50, monthly=100_000)
    assert admit(redis_quota, team, limits).allowed
    before = redis_quota.used(team_id=team.id, limits=limits)
    keys = [redis_quota._request_id_key(team.id, "late"), *redis_quota._prepared_for(team.id, limits).counter_keys]
    static = redis_quota._prepared_for(team.id, limits).static_args
    args = [86400, len(limits), NOW.timestamp(), 100, 100, "a", "1.0", "member", "p:" + "0" * 32 + ":a", *static]

    status, clock, *counts = redis_quota._evalsha(redis_quota._reserve, [*keys, redis_quota.reservations], args)

    assert (status, counts) == ("late", [])
    assert float(clock) > 1.7e9  # Redis's own clock
    assert redis_quota.used(team_id=team.id, limits=limits) == before
    assert redis_quota.client.zcard(redis_quota.reservations) == 0
    assert redis_quota.client.get(keys[0]) is None

    # A view of Redis's clock ten seconds behind: the first call is "late" (nothing done), its fast
    # reply corrects the view, the second call is admitted. Counted once.
    redis_quota._clock_offset -= 10
    decision = redis_quota.consume(
        team_id=team.id, request_id="clock", limits=limits, tokens=100, now=NOW,
        event=event_for(team, "clock", tokens=60),
    )  # fmt: skip
    assert decision.allowed
    assert redis_quota.used(team_id=team.id, limits=limits)[RPD] == before[RPD] + 1
    drained(redis_quota)
    assert records_of(team) == (2, 160)


def test_redis_noscript_is_the_one_answer_that_sends_the_script_again(redis_quota, team):
    limits = limits_at(NOW, rpm=5)
    assert admit(redis_quota, team, limits).allowed
    redis_quota.client.script_flush()  # a restarted Redis knows no scripts

    assert admit(redis_quota, team, limits).allowed
    assert redis_quota.used(team_id=team.id, limits=limits)[RPM] == 2


@pytest.mark.parametrize(
    ("record", "retry", "expect"),
    [
        ("same hash", "same", "duplicate"),
        ("same hash", "other", "reused"),
        ("no hash", "same", "admitted"),  # recorded before records kept hashes: counted, never refused
        ("none", "same", "admitted"),
        ("past retention", "same", "admitted"),
    ],
)
def test_redis_request_ids_held_by_the_earlier_version_are_resolved_against_the_record(
    redis_quota, team, record, retry, expect
):
    # The earlier version set the id's key to "1" for 48 h when it recorded the request.
    limits = limits_at(NOW, rpm=10)
    key = redis_quota._request_id_key(team.id, "legacy-1")
    redis_quota.client.set(key, "1", ex=48 * 3600)
    if record != "none":
        when = NOW - timedelta(days=2) if record == "past retention" else NOW - timedelta(minutes=5)
        usage_records_create(
            events=[event_for(team, "legacy-1", tokens=50, now=when, request_hash="" if record == "no hash" else "h")]
        )
    request_hash = "h" if retry == "same" else "x"

    decision = admit(redis_quota, team, limits, request_id="legacy-1", request_hash=request_hash)

    assert {"duplicate": decision.duplicate, "reused": decision.reused, "admitted": decision.allowed}[expect]
    if expect == "admitted":
        assert not decision.duplicate and decision.reservation is not None
        assert redis_quota.client.get(key) == request_hash  # bound to the new request
    drained(redis_quota)
    count, _ = records_of(team)
    assert redis_quota.used(team_id=team.id, limits=limits)[RPM] == (1 if expect == "admitted" else 0)
    assert count == (0 if record == "none" else 1) + (1 if expect == "admitted" else 0)
