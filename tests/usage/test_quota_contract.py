"""The quota backend contract (usage/quotas/base.py), one suite run against every backend.

Time is explicit (``now``), never slept through. The Redis backend runs against a real redis-server
(tests/usage/conftest.py), each test under a key prefix of its own.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.db.models import Sum
from django.test import override_settings

from accounts.models import Team
from accounts.services import team_create_personal
from tests.factories import UserFactory
from usage.models import TeamQuotaState, UsageRecord
from usage.quotas import get_quota_backend, reset_quota_backend_cache
from usage.quotas.base import (
    Decision,
    Limit,
    LimitName,
    QuotaBackend,
    UsageEvent,
    day_window,
    minute_window,
)
from usage.quotas.database import DatabaseQuotaBackend
from usage.quotas.redis import DRAIN_GROUP, RedisQuotaBackend, drain_usage_stream
from usage.quotas.redis_stream import event_fields
from usage.services import usage_records_create

RPM = LimitName.REQUESTS_PER_MINUTE
TPM = LimitName.TOKENS_PER_MINUTE
RPD = LimitName.REQUESTS_PER_DAY
MONTHLY = LimitName.MONTHLY_TOKENS

NOW = datetime(2026, 3, 5, 12, 0, 30, tzinfo=UTC)
PERIOD = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
NEXT_PERIOD = (datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC))


def limits_at(
    now: datetime,
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    rpd: int | None = None,
    monthly: int | None = None,
    monthly_enforced: bool = True,
    period: tuple[datetime, datetime] = PERIOD,
) -> tuple[Limit, ...]:
    return (
        Limit(RPM, rpm, *minute_window(now)),
        Limit(TPM, tpm, *minute_window(now)),
        Limit(RPD, rpd, *day_window(now)),
        Limit(MONTHLY, monthly, *period, enforced=monthly_enforced),
    )


def event_for(team: Team, request_id: str, *, tokens: int, now: datetime = NOW, request_hash: str = "") -> UsageEvent:
    prompt = tokens // 3
    return UsageEvent(
        request_id=request_id,
        team_id=team.id,
        api_key_id=None,
        model="Llama-3.3-8B-Instruct",
        prompt_tokens=prompt,
        completion_tokens=tokens - prompt,
        created_at=now,
        request_hash=request_hash,
    )


def admit(
    backend: QuotaBackend,
    team: Team,
    limits: tuple[Limit, ...],
    *,
    tokens: int = 100,
    actual: int | None = None,
    now: datetime = NOW,
    request_id: str | None = None,
    request_hash: str = "",
) -> Decision:
    """Reserve ``tokens`` and, if admitted, settle to ``actual`` (default: as reserved)."""
    request_id = request_id or uuid.uuid4().hex
    decision = backend.reserve(
        team_id=team.id, request_id=request_id, limits=limits, tokens=tokens, now=now, request_hash=request_hash
    )
    if decision.reservation is not None:
        event = event_for(
            team, request_id, tokens=tokens if actual is None else actual, now=now, request_hash=request_hash
        )
        assert backend.settle(reservation=decision.reservation, event=event) is True
    return decision


def records_of(team: Team) -> tuple[int, int]:
    rows = UsageRecord.objects.filter(team=team)
    return rows.count(), rows.aggregate(total=Sum("total_tokens"))["total"] or 0


def drained(backend: QuotaBackend) -> None:
    """Records are written at settle (database) or by the stream drainer (Redis): bring them in."""
    if isinstance(backend, RedisQuotaBackend):
        backend.drain_usage_stream(batch_size=7)


def redis_backend(url: str) -> Iterator[RedisQuotaBackend]:
    prefix = f"tltest:{uuid.uuid4().hex[:12]}:"
    backend = RedisQuotaBackend(url=url, key_prefix=prefix)
    try:
        yield backend
    finally:
        keys = list(backend.client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            backend.client.delete(*keys)
        backend.close()


@pytest.fixture(params=["database", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[QuotaBackend]:
    if request.param == "database":
        yield DatabaseQuotaBackend()
    else:
        yield from redis_backend(request.getfixturevalue("redis_server"))


@pytest.fixture
def redis_quota(redis_server: str) -> Iterator[RedisQuotaBackend]:
    yield from redis_backend(redis_server)


@pytest.fixture
def team(transactional_db: None) -> Team:
    # transactional_db throughout: the drainer acknowledges after commit, and the race test's threads
    # must see committed rows.
    return team_create_personal(user=UserFactory())


# --- admit and refuse ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit_kwargs", "denied", "retry_after"),
    [
        ({"rpm": 2}, RPM, 30),
        ({"tpm": 250}, TPM, 30),
        ({"rpd": 2}, RPD, 11 * 3600 + 59 * 60 + 30),
        ({"monthly": 250}, MONTHLY, int((PERIOD[1] - NOW).total_seconds())),
    ],
    ids=["requests_per_minute", "tokens_per_minute", "requests_per_day", "monthly_tokens"],
)
def test_admits_within_limits_then_refuses_with_the_limit_and_when_to_retry(
    backend, team, limit_kwargs, denied, retry_after
):
    limits = limits_at(NOW, **limit_kwargs)
    assert [admit(backend, team, limits).allowed for _ in range(2)] == [True, True]
    before = backend.used(team_id=team.id, limits=limits)
    assert before == {RPM: 2, TPM: 200, RPD: 2, MONTHLY: 200}

    decision = backend.reserve(team_id=team.id, request_id="third", limits=limits, tokens=100, now=NOW)

    assert not decision.allowed and decision.reservation is None and not decision.duplicate
    assert decision.denied is denied
    assert decision.code == ("insufficient_quota" if denied is MONTHLY else "rate_limit_exceeded")
    assert decision.retry_after == retry_after
    # A refusal consumes nothing, and reports the counts it refused on.
    assert backend.used(team_id=team.id, limits=limits) == before == decision.used


def test_a_request_larger_than_the_room_left_is_refused_although_requests_remain(backend, team):
    limits = limits_at(NOW, rpm=10, tpm=1000)
    assert admit(backend, team, limits, tokens=900).allowed
    decision = backend.reserve(team_id=team.id, request_id="big", limits=limits, tokens=101, now=NOW)
    assert decision.denied is TPM
    assert admit(backend, team, limits, tokens=100).allowed


def test_out_of_monthly_quota_wins_over_slow_down(backend, team):
    limits = limits_at(NOW, rpm=1, rpd=1, monthly=100)
    assert admit(backend, team, limits, tokens=100).allowed

    decision = backend.reserve(team_id=team.id, request_id="next", limits=limits, tokens=10, now=NOW)

    assert decision.denied is MONTHLY
    assert decision.code == "insufficient_quota"
    # Retrying is worth it only once every refusing window has reset: the period's end.
    assert decision.retry_after == int((PERIOD[1] - NOW).total_seconds())


def test_per_day_refusal_reports_the_day_not_the_minute(backend, team):
    limits = limits_at(NOW, rpm=1, rpd=1)
    assert admit(backend, team, limits).allowed
    decision = backend.reserve(team_id=team.id, request_id="next", limits=limits, tokens=10, now=NOW)
    assert decision.denied is RPD and decision.code == "rate_limit_exceeded"
    assert decision.retry_after == 11 * 3600 + 59 * 60 + 30


def test_unenforced_monthly_quota_counts_but_never_refuses(backend, team):
    limits = limits_at(NOW, monthly=100, monthly_enforced=False)
    decisions = [admit(backend, team, limits, tokens=150) for _ in range(3)]
    assert all(d.allowed for d in decisions)
    assert decisions[-1].used[MONTHLY] == 450
    assert backend.used(team_id=team.id, limits=limits)[MONTHLY] == 450


def test_unlimited_limits_never_refuse(backend, team):
    limits = limits_at(NOW)
    assert all(admit(backend, team, limits, tokens=10**9).allowed for _ in range(25))
    assert backend.used(team_id=team.id, limits=limits) == {RPM: 25, TPM: 25 * 10**9, RPD: 25, MONTHLY: 25 * 10**9}


def test_a_zero_capacity_refuses_everything(backend, team):
    decision = backend.reserve(team_id=team.id, request_id="r", limits=limits_at(NOW, monthly=0), tokens=1, now=NOW)
    assert decision.denied is MONTHLY


# --- windows ------------------------------------------------------------------------------------------


def test_windows_roll_over_at_the_next_minute_day_and_period(backend, team):
    def at(now, period=PERIOD):
        return limits_at(now, rpm=1, rpd=2, monthly=300, period=period)

    assert admit(backend, team, at(NOW), now=NOW).allowed
    assert admit(backend, team, at(NOW), now=NOW).denied is RPM

    next_minute = NOW + timedelta(minutes=1)
    assert admit(backend, team, at(next_minute), now=next_minute).allowed
    assert backend.used(team_id=team.id, limits=at(next_minute)) == {RPM: 1, TPM: 100, RPD: 2, MONTHLY: 200}
    later = NOW + timedelta(minutes=2)
    assert admit(backend, team, at(later), now=later).denied is RPD

    next_day = datetime(2026, 3, 6, 0, 0, 10, tzinfo=UTC)
    assert admit(backend, team, at(next_day), now=next_day).allowed
    assert backend.used(team_id=team.id, limits=at(next_day)) == {RPM: 1, TPM: 100, RPD: 1, MONTHLY: 300}
    after = next_day + timedelta(minutes=1)
    assert admit(backend, team, at(after), now=after).denied is MONTHLY

    next_period = datetime(2026, 4, 1, 0, 0, 5, tzinfo=UTC)
    assert admit(backend, team, at(next_period, NEXT_PERIOD), now=next_period).allowed
    assert backend.used(team_id=team.id, limits=at(next_period, NEXT_PERIOD)) == {
        RPM: 1,
        TPM: 100,
        RPD: 1,
        MONTHLY: 100,
    }


# --- settle, refund, duplicates ----------------------------------------------------------------------


def test_settle_corrects_the_reserved_tokens_down_and_up(backend, team):
    limits = limits_at(NOW, tpm=10_000, monthly=10_000)
    assert admit(backend, team, limits, tokens=100, actual=30).used[TPM] == 100
    assert backend.used(team_id=team.id, limits=limits) == {RPM: 1, TPM: 30, RPD: 1, MONTHLY: 30}

    assert admit(backend, team, limits, tokens=100, actual=150).allowed
    assert backend.used(team_id=team.id, limits=limits) == {RPM: 2, TPM: 180, RPD: 2, MONTHLY: 180}

    drained(backend)
    assert records_of(team) == (2, 180)


def test_settle_leaves_a_window_that_rolled_over_alone(backend, team):
    first = backend.reserve(team_id=team.id, request_id="a", limits=limits_at(NOW), tokens=100, now=NOW)
    next_minute = NOW + timedelta(minutes=1)
    later = limits_at(next_minute)
    assert admit(backend, team, later, tokens=50, now=next_minute).allowed

    assert backend.settle(reservation=first.reservation, event=event_for(team, "a", tokens=10)) is True

    # The minute that was reserved is gone: the new minute keeps its own count; the period is corrected.
    assert backend.used(team_id=team.id, limits=later) == {RPM: 1, TPM: 50, RPD: 2, MONTHLY: 60}


def test_refund_gives_everything_back_and_the_request_id_may_be_retried(backend, team):
    limits = limits_at(NOW, rpm=5, tpm=1000, rpd=5, monthly=1000)
    assert admit(backend, team, limits, tokens=100, actual=70).allowed
    before = backend.used(team_id=team.id, limits=limits)

    decision = backend.reserve(team_id=team.id, request_id="failed", limits=limits, tokens=300, now=NOW)
    assert decision.used == {RPM: 2, TPM: 370, RPD: 2, MONTHLY: 370}
    backend.refund(reservation=decision.reservation)

    assert backend.used(team_id=team.id, limits=limits) == before
    retried = admit(backend, team, limits, tokens=100, request_id="failed")
    assert retried.allowed and not retried.duplicate


def test_a_recorded_request_id_is_served_again_without_consuming(backend, team):
    limits = limits_at(NOW, rpm=5)
    assert admit(backend, team, limits, request_id="req-1").allowed
    before = backend.used(team_id=team.id, limits=limits)

    again = backend.reserve(team_id=team.id, request_id="req-1", limits=limits, tokens=100, now=NOW)

    assert again.allowed and again.duplicate and again.reservation is None
    assert backend.used(team_id=team.id, limits=limits) == before
    drained(backend)
    assert records_of(team) == (1, 100)


def test_a_pending_request_id_refuses_the_same_and_other_requests_and_counts_nothing(backend, team):
    # Issue 11 (a): a client retries while its first attempt is still running (reserved, not settled).
    limits = limits_at(NOW, rpm=5)
    first = backend.reserve(team_id=team.id, request_id="twice", limits=limits, tokens=100, now=NOW, request_hash="a")
    assert first.allowed and first.reservation is not None
    before = backend.used(team_id=team.id, limits=limits)

    same = backend.reserve(team_id=team.id, request_id="twice", limits=limits, tokens=100, now=NOW, request_hash="a")
    assert not same.allowed and same.in_progress and not same.reused and same.reservation is None
    other = backend.reserve(team_id=team.id, request_id="twice", limits=limits, tokens=100, now=NOW, request_hash="b")
    assert not other.allowed and other.reused and not other.in_progress
    consumed = backend.consume(
        team_id=team.id, request_id="twice", limits=limits, tokens=100, now=NOW,
        event=event_for(team, "twice", tokens=90, request_hash="a"),
    )  # fmt: skip
    assert not consumed.allowed and consumed.in_progress
    assert backend.used(team_id=team.id, limits=limits) == before

    event = event_for(team, "twice", tokens=40, request_hash="a")
    assert backend.settle(reservation=first.reservation, event=event) is True
    # Recorded: the same request is now answered again, counted once.
    assert backend.reserve(
        team_id=team.id, request_id="twice", limits=limits, tokens=100, now=NOW, request_hash="a"
    ).duplicate
    assert backend.used(team_id=team.id, limits=limits) == {RPM: 1, TPM: 40, RPD: 1, MONTHLY: 40}
    drained(backend)
    assert records_of(team) == (1, 40)


def test_settle_and_refund_happen_once(backend, team):
    limits = limits_at(NOW, rpm=5)
    settled = backend.reserve(team_id=team.id, request_id="s", limits=limits, tokens=100, now=NOW)
    assert backend.settle(reservation=settled.reservation, event=event_for(team, "s", tokens=60)) is True
    assert backend.settle(reservation=settled.reservation, event=event_for(team, "s", tokens=60)) is False
    backend.refund(reservation=settled.reservation)  # after its settle: nothing to give back

    refunded = backend.reserve(team_id=team.id, request_id="r", limits=limits, tokens=100, now=NOW)
    backend.refund(reservation=refunded.reservation)
    backend.refund(reservation=refunded.reservation)
    assert backend.settle(reservation=refunded.reservation, event=event_for(team, "r", tokens=60)) is False

    assert backend.used(team_id=team.id, limits=limits) == {RPM: 1, TPM: 60, RPD: 1, MONTHLY: 60}
    drained(backend)
    assert records_of(team) == (1, 60)


# --- request ids bind to the request they recorded (DESIGN.md "Request ids"; issue 11, finding 1) ------


def test_a_recorded_request_id_with_a_different_request_is_refused_and_consumes_nothing(backend, team):
    limits = limits_at(NOW, rpm=5, tpm=10_000, rpd=50, monthly=100_000)
    assert admit(backend, team, limits, request_id="dup-X", request_hash="a" * 64).allowed
    before = backend.used(team_id=team.id, limits=limits)

    other = backend.reserve(
        team_id=team.id, request_id="dup-X", limits=limits, tokens=100, now=NOW, request_hash="b" * 64
    )
    assert not other.allowed and other.reused and not other.duplicate and other.reservation is None
    assert other.denied is None and other.code is None
    consumed = backend.consume(
        team_id=team.id, request_id="dup-X", limits=limits, tokens=100, now=NOW,
        event=event_for(team, "dup-X", tokens=60, request_hash="b" * 64),
    )  # fmt: skip
    assert not consumed.allowed and consumed.reused

    same = backend.reserve(
        team_id=team.id, request_id="dup-X", limits=limits, tokens=100, now=NOW, request_hash="a" * 64
    )
    assert same.allowed and same.duplicate and same.reservation is None
    assert backend.used(team_id=team.id, limits=limits) == before
    drained(backend)
    assert records_of(team) == (1, 100)
    assert UsageRecord.objects.get(team=team).request_hash == "a" * 64


@pytest.mark.parametrize("path", ["reserve", "consume"])
def test_a_full_window_is_not_bypassed_by_reusing_a_recorded_request_id(backend, team, path):
    # The finding: one request with an id, the minute used up, then other prompts with the same id.
    limits = limits_at(NOW, rpm=2, tpm=100_000, rpd=1_000, monthly=1_000_000)
    assert admit(backend, team, limits, request_id="dup-X", request_hash="0" * 64).allowed
    assert admit(backend, team, limits).allowed
    assert admit(backend, team, limits).denied is RPM
    before = backend.used(team_id=team.id, limits=limits)

    for number in range(15):
        request_hash = f"{number + 1:064x}"
        if path == "reserve":
            decision = backend.reserve(
                team_id=team.id, request_id="dup-X", limits=limits, tokens=150, now=NOW, request_hash=request_hash
            )
        else:
            decision = backend.consume(
                team_id=team.id, request_id="dup-X", limits=limits, tokens=150, now=NOW,
                event=event_for(team, "dup-X", tokens=120, request_hash=request_hash),
            )  # fmt: skip
        assert not decision.allowed and decision.reused

    assert backend.used(team_id=team.id, limits=limits) == before
    drained(backend)
    assert records_of(team) == (2, 200)


def test_a_refused_request_id_may_be_used_again(backend, team):
    limits = limits_at(NOW, rpm=1)
    assert admit(backend, team, limits).allowed
    refused = backend.reserve(team_id=team.id, request_id="later", limits=limits, tokens=100, now=NOW, request_hash="a")
    assert refused.denied is RPM

    later = NOW + timedelta(minutes=1)
    retried = admit(backend, team, limits_at(later, rpm=1), now=later, request_id="later", request_hash="b")
    assert retried.allowed and not retried.duplicate and retried.reservation is not None
    drained(backend)
    assert records_of(team) == (2, 200)


def test_a_refunded_request_leaves_its_id_free(backend, team):
    limits = limits_at(NOW, rpm=5)
    decision = backend.reserve(team_id=team.id, request_id="r", limits=limits, tokens=100, now=NOW, request_hash="a")
    backend.refund(reservation=decision.reservation)
    again = admit(backend, team, limits, request_id="r", request_hash="b")
    assert again.allowed and again.reservation is not None
    assert admit(backend, team, limits, request_id="r", request_hash="c").reused


def test_request_ids_are_answered_again_only_within_the_retention_then_free_for_a_new_request(backend, team, settings):
    # Issue 11 (b): one rule on both backends. Within the retention the same request is answered again
    # and another refused; after it the id is free: a new request, counted and recorded once.
    settings.TIERLAB_REQUEST_ID_RETENTION_SECONDS = 2
    limits = limits_at(NOW, rpm=5)
    assert admit(backend, team, limits, request_id="old", request_hash="a").allowed
    if isinstance(backend, RedisQuotaBackend):
        # The binding lives as long as the retention (the one setting both backends read).
        assert 1 <= backend.client.ttl(backend._request_id_key(team.id, "old")) <= 2

    within = NOW + timedelta(seconds=1)
    assert backend.reserve(
        team_id=team.id, request_id="old", limits=limits, tokens=100, now=within, request_hash="a"
    ).duplicate
    assert backend.reserve(
        team_id=team.id, request_id="old", limits=limits, tokens=100, now=within, request_hash="b"
    ).reused

    # Past the retention: the database backend reads the request's clock, Redis its key's TTL.
    past = NOW + timedelta(seconds=3)
    if isinstance(backend, RedisQuotaBackend):
        time.sleep(2.1)
    again = admit(backend, team, limits, now=past, request_id="old", request_hash="a", actual=70)
    assert again.allowed and not again.duplicate and again.reservation is not None
    assert admit(backend, team, limits, now=past, request_id="old", request_hash="a").duplicate

    assert backend.used(team_id=team.id, limits=limits) == {RPM: 2, TPM: 170, RPD: 2, MONTHLY: 170}
    drained(backend)
    assert records_of(team) == (2, 170)
    # The newer record holds the id; the older one gave it up.
    holders = dict(UsageRecord.objects.filter(team=team).values_list("total_tokens", "request_key"))
    assert holders == {100: None, 70: "old"}


def test_counters_never_go_negative(backend, team):
    limits = limits_at(NOW)
    decision = backend.reserve(team_id=team.id, request_id="r", limits=limits, tokens=100, now=NOW)
    backend.refund(reservation=decision.reservation)
    backend.refund(reservation=decision.reservation)
    assert backend.used(team_id=team.id, limits=limits) == {RPM: 0, TPM: 0, RPD: 0, MONTHLY: 0}


# --- the race ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["requests_per_day", "monthly_tokens"])
def test_racing_clients_never_get_more_than_the_quota_and_counters_equal_records(backend, team, scenario):
    clients, quota = 50, 10
    if scenario == "requests_per_day":
        # Settles correct tokens down while others reserve: only the request count decides.
        limits, reserved, actual, expect_denied = limits_at(NOW, rpm=1000, rpd=quota), 100, 60, RPD
    else:
        # Room for exactly ``quota`` more requests of 100 tokens after earlier usage.
        limits, reserved, actual, expect_denied = limits_at(NOW, monthly=500 + quota * 100), 100, 100, MONTHLY
        assert admit(backend, team, limits, tokens=500).allowed

    start = threading.Barrier(clients)
    decisions: list[Decision] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        try:
            start.wait(timeout=30)
            request_id = f"race-{number}"
            decision = backend.reserve(team_id=team.id, request_id=request_id, limits=limits, tokens=reserved, now=NOW)
            if decision.reservation is not None:
                backend.settle(reservation=decision.reservation, event=event_for(team, request_id, tokens=actual))
            with lock:
                decisions.append(decision)
        except BaseException as error:
            with lock:
                errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not [thread for thread in threads if thread.is_alive()]
    assert errors == []

    assert sum(d.allowed for d in decisions) == quota
    assert {d.denied for d in decisions if not d.allowed} == {expect_denied}
    assert {d.code for d in decisions if not d.allowed} == {expect_denied.refusal_code}

    drained(backend)
    count, tokens = records_of(team)
    used = backend.used(team_id=team.id, limits=limits)
    assert used[RPD] == count and used[MONTHLY] == tokens
    assert (count, tokens) == ((quota, quota * actual) if scenario == "requests_per_day" else (quota + 1, 1500))
    if isinstance(backend, DatabaseQuotaBackend):
        state = TeamQuotaState.objects.get(team=team)
        assert (state.day_requests, state.period_tokens) == (count, tokens)


def _race(clients: int, step) -> list:
    start = threading.Barrier(clients)
    results, errors, lock = [], [], threading.Lock()

    def client(number: int) -> None:
        try:
            start.wait(timeout=30)
            result = step(number)
            with lock:
                results.append(result)
        except BaseException as error:
            with lock:
                errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not [thread for thread in threads if thread.is_alive()]
    assert errors == []
    return results


def test_one_request_id_raced_by_consumes_and_reserves_is_counted_and_recorded_once(backend, team):
    # Issue 17: on PostgreSQL consume and reserve are one statement each, whose snapshot predates the
    # row lock; a reservation and a record of the same id committed meanwhile must still be seen.
    limits = limits_at(NOW, rpm=1000, rpd=1000)

    def step(number: int) -> Decision:
        if number % 2:
            return backend.consume(
                team_id=team.id, request_id="same", limits=limits, tokens=100, now=NOW,
                event=event_for(team, "same", tokens=40),
            )  # fmt: skip
        decision = backend.reserve(team_id=team.id, request_id="same", limits=limits, tokens=100, now=NOW)
        if decision.reservation is not None:
            backend.settle(reservation=decision.reservation, event=event_for(team, "same", tokens=40))
        return decision

    decisions = _race(16, step)
    drained(backend)
    assert records_of(team) == (1, 40)
    used = backend.used(team_id=team.id, limits=limits)
    assert (used[RPD], used[MONTHLY]) == (1, 40)
    assert sum(1 for d in decisions if d.allowed and not d.duplicate and not d.in_progress) == 1


def test_racing_consumes_of_distinct_ids_keep_counters_equal_to_records(backend, team):
    limits = limits_at(NOW, rpm=1000, rpd=1000)

    def step(number: int) -> Decision:
        return backend.consume(
            team_id=team.id, request_id=f"c-{number}", limits=limits, tokens=100, now=NOW,
            event=event_for(team, f"c-{number}", tokens=30 + number),
        )  # fmt: skip

    decisions = _race(24, step)
    assert all(d.allowed for d in decisions)
    drained(backend)
    count, tokens = records_of(team)
    assert (count, tokens) == (24, sum(30 + n for n in range(24)))
    used = backend.used(team_id=team.id, limits=limits)
    assert (used[RPD], used[MONTHLY]) == (count, tokens)


# --- query counts (the hot path) ------------------------------------------------------------------------


def test_database_backend_steps_are_one_transaction_of_few_statements(team, django_assert_max_num_queries):
    backend = DatabaseQuotaBackend()
    limits = limits_at(NOW, rpm=10, tpm=10_000, rpd=100, monthly=100_000)
    assert admit(backend, team, limits).allowed  # creates the team's row
    # PostgreSQL: an admitted consume or reserve is ONE statement (charge and insert in one CTE); a refused
    # or held one tries that statement, then takes the transactional path, which says why (one more).
    pg = connection.vendor == "postgresql"

    # One transaction each: its statements, plus BEGIN IMMEDIATE and COMMIT where they are counted (SQLite).
    with django_assert_max_num_queries(1 if pg else 4):  # UPDATE, INSERT the record
        consumed = backend.consume(
            team_id=team.id, request_id="hot", limits=limits, tokens=100, now=NOW,
            event=event_for(team, "hot", tokens=50),
        )  # fmt: skip
    assert consumed.allowed
    with django_assert_max_num_queries(1 if pg else 4):  # UPDATE, INSERT the reservation
        decision = backend.reserve(team_id=team.id, request_id="warm", limits=limits, tokens=100, now=NOW)
    with django_assert_max_num_queries(5):  # UPDATE, DELETE the reservation, INSERT the record
        assert backend.settle(reservation=decision.reservation, event=event_for(team, "warm", tokens=50))
    # A held id: the step rolled back (UPDATE, INSERT nothing), then one SELECT says why.
    with django_assert_max_num_queries(5 + pg):
        assert backend.reserve(team_id=team.id, request_id="hot", limits=limits, tokens=100, now=NOW).duplicate
    with django_assert_max_num_queries(4 + pg):
        # Refused by a limit: the UPDATE changes nothing, then the SELECT explains.
        assert not backend.reserve(team_id=team.id, request_id="big", limits=limits, tokens=20_000, now=NOW).allowed
    assert records_of(team)[0] == 3  # the first admit, "hot" and "warm": nothing else recorded


def test_redis_backend_runs_no_sql_on_the_request_path(redis_quota, team, django_assert_num_queries):
    limits = limits_at(NOW, rpm=10, monthly=100_000)
    assert admit(redis_quota, team, limits).allowed  # initialises the monthly counter from the database

    with django_assert_num_queries(0):
        decision = redis_quota.reserve(team_id=team.id, request_id="hot", limits=limits, tokens=100, now=NOW)
        redis_quota.settle(reservation=decision.reservation, event=event_for(team, "hot", tokens=50))
        refunded = redis_quota.reserve(team_id=team.id, request_id="gone", limits=limits, tokens=100, now=NOW)
        redis_quota.refund(reservation=refunded.reservation)


# --- Redis: the monthly counter and the usage stream ------------------------------------------------------


def test_redis_monthly_counter_starts_from_the_recorded_usage_when_redis_lost_it(redis_quota, team):
    # Usage recorded this period before Redis had (or after it lost) the counter.
    usage_records_create(events=[event_for(team, "earlier", tokens=400, now=NOW - timedelta(days=2))])
    usage_records_create(events=[event_for(team, "last-period", tokens=999, now=PERIOD[0] - timedelta(days=1))])
    limits = limits_at(NOW, monthly=500)

    decision = redis_quota.reserve(team_id=team.id, request_id="r", limits=limits, tokens=200, now=NOW)

    assert decision.denied is MONTHLY and decision.used[MONTHLY] == 400
    assert admit(redis_quota, team, limits, tokens=100).used[MONTHLY] == 500


def test_drain_stores_every_event_exactly_once(redis_quota, team):
    limits = limits_at(NOW)
    for _ in range(5):
        assert admit(redis_quota, team, limits, tokens=100, actual=10).allowed

    assert redis_quota.drain_usage_stream(batch_size=2) == 5
    assert redis_quota.drain_usage_stream(batch_size=2) == 0
    assert redis_quota.drain_usage_stream(block_ms=50) == 0  # waits for new events, then gives up
    assert records_of(team) == (5, 50)
    assert redis_quota.client.xlen(redis_quota.stream) == 0

    # A redelivered event (a drainer's ack lost after its commit) adds nothing.
    record = UsageRecord.objects.filter(team=team).first()
    redelivered = event_for(team, record.request_id, tokens=record.total_tokens, now=record.created_at)
    _stream_append(redis_quota, redelivered)
    assert redis_quota.drain_usage_stream() == 0
    assert records_of(team) == (5, 50)


def _stream_append(backend: RedisQuotaBackend, event: UsageEvent) -> None:
    """An event in the stream as the scripts append it (the drain's input)."""
    name, value = event_fields(event)
    backend.client.xadd(backend.stream, {name: value})


def test_drain_reclaims_the_batch_of_a_drainer_that_crashed_before_acknowledging(redis_quota, team, monkeypatch):
    limits = limits_at(NOW)
    for _ in range(3):
        assert admit(redis_quota, team, limits).allowed

    # A drainer that read the batch and died before writing it.
    redis_quota.drain_usage_stream(batch_size=1, reclaim_idle_ms=60_000)  # creates the group (and drains)
    assert admit(redis_quota, team, limits).allowed
    redis_quota.client.xreadgroup(DRAIN_GROUP, "crashed", {redis_quota.stream: ">"}, count=10)
    # Not idle long enough yet: left to its reader.
    assert redis_quota.drain_usage_stream(reclaim_idle_ms=60_000) == 0
    assert redis_quota.drain_usage_stream(reclaim_idle_ms=0) == 1

    # A drainer that wrote its batch and died before acknowledging it: the batch comes back, adds nothing.
    assert admit(redis_quota, team, limits).allowed
    monkeypatch.setattr(redis_quota, "_ack", lambda entry_ids: None)
    assert redis_quota.drain_usage_stream() == 1
    monkeypatch.undo()
    assert redis_quota.client.xpending(redis_quota.stream, DRAIN_GROUP)["pending"] == 1
    assert redis_quota.drain_usage_stream(reclaim_idle_ms=0) == 0

    assert redis_quota.client.xpending(redis_quota.stream, DRAIN_GROUP)["pending"] == 0
    assert redis_quota.client.xlen(redis_quota.stream) == 0
    assert records_of(team) == (5, 500)


def test_drain_sets_aside_events_the_database_refuses(redis_quota, team):
    limits = limits_at(NOW)
    assert admit(redis_quota, team, limits).allowed
    redis_quota.client.xadd(redis_quota.stream, {"request_id": "broken"})  # unreadable
    gone = Team.objects.create(name="deleted")
    bad = event_for(gone, "orphan", tokens=5)
    gone.delete()
    _stream_append(redis_quota, bad)  # its team no longer exists

    assert redis_quota.drain_usage_stream() == 1
    assert records_of(team) == (1, 100)
    assert redis_quota.client.xlen(redis_quota.dead_letter_stream) == 2
    assert redis_quota.client.xlen(redis_quota.stream) == 0


# --- choosing the backend ------------------------------------------------------------------------------


@pytest.fixture
def fresh_backend_cache() -> Iterator[None]:
    reset_quota_backend_cache()
    yield
    reset_quota_backend_cache()


def test_the_setting_chooses_one_backend_per_process(fresh_backend_cache, redis_server):
    with override_settings(TIERLAB_QUOTA_BACKEND="database"):
        backend = get_quota_backend()
        assert isinstance(backend, DatabaseQuotaBackend) and get_quota_backend() is backend
        assert drain_usage_stream() == 0  # nothing is streamed with the database backend
    reset_quota_backend_cache()
    with override_settings(TIERLAB_QUOTA_BACKEND="redis", REDIS_URL=redis_server):
        backend = get_quota_backend()
        assert isinstance(backend, RedisQuotaBackend) and get_quota_backend() is backend
        assert backend.client.ping()


def test_drain_usage_stream_drains_the_configured_backend(fresh_backend_cache, redis_quota, team, monkeypatch):
    monkeypatch.setattr("usage.quotas._backend", redis_quota)
    assert admit(redis_quota, team, limits_at(NOW)).allowed
    assert drain_usage_stream(batch_size=10) == 1
    assert records_of(team) == (1, 100)


# --- consume: reserve and settle as one step (non-streaming requests) ---------------------------------


def test_consume_checks_like_reserve_and_records_the_actual_tokens_once(backend, team):
    limits = limits_at(NOW, tpm=1_000, rpd=10, monthly=10_000)
    decision = backend.consume(
        team_id=team.id, request_id="one", limits=limits, tokens=400, event=event_for(team, "one", tokens=120), now=NOW
    )
    assert decision.allowed and not decision.duplicate and decision.reservation is None
    assert decision.used == {RPM: 1, TPM: 120, RPD: 1, MONTHLY: 120}
    assert backend.used(team_id=team.id, limits=limits) == {RPM: 1, TPM: 120, RPD: 1, MONTHLY: 120}

    # Checked against the reservation (900 would not fit in 1,000 - 120), though only 50 would be used.
    refused = backend.consume(
        team_id=team.id, request_id="two", limits=limits, tokens=900, event=event_for(team, "two", tokens=50), now=NOW
    )
    assert not refused.allowed and refused.denied is TPM and refused.code == "rate_limit_exceeded"

    again = backend.consume(
        team_id=team.id, request_id="one", limits=limits, tokens=400, event=event_for(team, "one", tokens=120), now=NOW
    )
    assert again.allowed and again.duplicate
    drained(backend)
    assert records_of(team) == (1, 120)
    assert backend.used(team_id=team.id, limits=limits) == {RPM: 1, TPM: 120, RPD: 1, MONTHLY: 120}


def test_fifty_consumers_racing_for_ten_admit_exactly_ten(backend, team):
    limits = limits_at(NOW, rpd=10, monthly=1_000_000)
    start = threading.Barrier(50)
    decisions: list[Decision] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        try:
            start.wait(timeout=30)
            request_id = f"consume-{number}"
            decision = backend.consume(
                team_id=team.id, request_id=request_id, limits=limits, tokens=200,
                event=event_for(team, request_id, tokens=60), now=NOW,
            )  # fmt: skip
            with lock:
                decisions.append(decision)
        except BaseException as error:
            with lock:
                errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(number,)) for number in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and len(decisions) == 50
    assert sum(d.allowed for d in decisions) == 10
    assert {d.denied for d in decisions if not d.allowed} == {RPD}
    drained(backend)
    assert records_of(team) == (10, 600)
    used = backend.used(team_id=team.id, limits=limits)
    assert (used[RPD], used[MONTHLY]) == (10, 600)


def test_redis_server_generated_request_ids_leave_no_key_and_counters_expire_after_their_window(redis_quota, team):
    limits = limits_at(NOW, rpm=10, tpm=10_000, rpd=100, monthly=100_000)
    assert admit(redis_quota, team, limits).allowed  # initialises the monthly counter from the database
    client = redis_quota.client
    rid_keys_before = set(client.scan_iter(match=f"{redis_quota.key_prefix}q:{team.id}:rid:*"))

    # The same limits object for every request of the minute, as the request path passes it.
    for n in range(3):
        decision = redis_quota.consume(
            team_id=team.id, request_id=f"req_new{n}", limits=limits, tokens=100,
            event=event_for(team, f"req_new{n}", tokens=40), now=NOW, request_id_is_new=True,
        )  # fmt: skip
        assert decision.allowed and not decision.duplicate
    assert decision.used[RPM] == 4 and decision.used[TPM] == 100 + 3 * 40

    # No request-id key for generated ids (a client's X-Request-Id still gets one).
    assert set(client.scan_iter(match=f"{redis_quota.key_prefix}q:{team.id}:rid:*")) == rid_keys_before
    # Counters live until their window ends (from the request's clock) plus the grace the script adds.
    rpm_key = redis_quota._counter_key(team.id, limits[0])
    rpd_key = redis_quota._counter_key(team.id, limits[2])
    assert 80 <= client.ttl(rpm_key) <= 90  # 30 s left in 12:00 + 60 s grace
    assert 86_400 + 43_000 <= client.ttl(rpd_key) <= 86_400 + 43_170  # about 11 h 59 m left + a day

    # The next minute's limits are new counters, whatever was prepared for this minute.
    later = NOW + timedelta(minutes=1)
    next_minute = limits_at(later, rpm=10, tpm=10_000, rpd=100, monthly=100_000)
    decision = redis_quota.consume(
        team_id=team.id, request_id="req_next", limits=next_minute, tokens=100,
        event=event_for(team, "req_next", tokens=40, now=later), now=later, request_id_is_new=True,
    )  # fmt: skip
    assert decision.used[RPM] == 1 and decision.used[RPD] == 5
    drained(redis_quota)
    assert records_of(team) == (5, 100 + 4 * 40)
