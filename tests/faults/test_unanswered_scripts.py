"""Issue 12: a quota script that ran although its caller never got the answer (the reply was lost:
Redis stalled right after running it, or the network dropped it), and a settle that never ran.

- A consume without ``X-Request-Id`` whose answer is lost: the model API answered 503, so the request
  must not be recorded or counted, though the script counted it and streamed its event. The drain skips
  the event and gives the counts back; if the record was stored before the caller wrote the consume
  down, the sweeper removes it, rollups included.
- A settle whose answer is lost (the stream was answered 200): recorded exactly once whether the
  settle ran or not; the sweeper sends it again before it would refund the reservation.

A proxy between the backend and Redis loses the answers (or the calls) on demand: tests/faults/muting_proxy.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.conf import settings

from tests.faults.muting_proxy import MutingProxy
from tests.usage.test_quota_contract import NOW, event_for, limits_at
from usage.models import UnansweredScript, UsageRecord, UsageRollup
from usage.quotas.base import LimitName, QuotaBackendUnavailable
from usage.quotas.redis import RedisQuotaBackend
from usage.rollups import usage_rollup_fold

READ_TIMEOUT = 0.5
LIMITS = limits_at(NOW, rpm=100, tpm=100_000, rpd=1000, monthly=1_000_000)
AFTER_SWEEP_TIMEOUT = NOW + timedelta(seconds=settings.TIERLAB_RESERVATION_TIMEOUT_SECONDS + 60)


@pytest.fixture
def team(fault_account):
    return fault_account[0]


@pytest.fixture
def proxy(private_redis) -> Iterator[MutingProxy]:
    with MutingProxy(("127.0.0.1", private_redis.port)) as running:
        yield running


@pytest.fixture
def backend(proxy, team) -> Iterator[RedisQuotaBackend]:
    """The backend through the proxy, warmed: scripts loaded, Redis's clock known, the monthly counter
    initialised, one request recorded."""
    through = RedisQuotaBackend(url=proxy.url, read_timeout=READ_TIMEOUT)
    warm = through.consume(
        team_id=team.id, request_id="warm", limits=LIMITS, tokens=100, now=NOW, event=event_for(team, "warm", tokens=50)
    )
    assert warm.allowed
    assert through.drain_usage_stream() == 1
    yield through
    through.close()


def counts(backend: RedisQuotaBackend, team) -> tuple[int, int]:
    used = backend.used(team_id=team.id, limits=LIMITS)
    return used[LimitName.REQUESTS_PER_DAY], used[LimitName.MONTHLY_TOKENS]


def records(team) -> list[tuple[str, int]]:
    return sorted(UsageRecord.objects.filter(team=team).values_list("request_id", "total_tokens"))


def consume_with_lost_answer(backend: RedisQuotaBackend, proxy: MutingProxy, team, request_id: str) -> None:
    proxy.mode = "drop_replies"
    with pytest.raises(QuotaBackendUnavailable):
        backend.consume(
            team_id=team.id, request_id=request_id, limits=LIMITS, tokens=100, now=NOW,
            event=event_for(team, request_id, tokens=70), request_id_is_new=True,
        )  # fmt: skip
    proxy.mode = "pass"


def test_a_consume_whose_answer_is_lost_is_neither_recorded_nor_counted(backend, proxy, team, report):
    before = counts(backend, team)
    consume_with_lost_answer(backend, proxy, team, "req_lost")
    ran = counts(backend, team)
    assert ran == (before[0] + 1, before[1] + 70)  # the script ran: Redis counted it and streamed its event
    row = UnansweredScript.objects.get(kind="consume", team=team, request_id="req_lost")
    assert row.resolved_at is None

    assert backend.drain_usage_stream() == 0  # the event is skipped, its counts given back
    assert records(team) == [("warm", 50)]
    assert counts(backend, team) == before
    row.refresh_from_db()
    assert row.resolved_at is not None
    # Given back once: a second drain, a sweep and the undo sent again change nothing.
    assert backend.drain_usage_stream() == 0
    backend.sweep(now=AFTER_SWEEP_TIMEOUT)
    assert backend.unanswered_consume_undo(row) is False
    assert counts(backend, team) == before and records(team) == [("warm", 50)]
    report(f"[faults] consume answer lost: counted {ran} while unanswered, {counts(backend, team)} after the drain")


def test_a_record_stored_before_its_consume_was_written_down_is_removed_by_the_sweeper(backend, proxy, team):
    before = counts(backend, team)
    consume_with_lost_answer(backend, proxy, team, "req_quick")
    # The drain was quicker than the caller's note (it stores the event first): replay that order.
    row = UnansweredScript.objects.get(kind="consume", request_id="req_quick")
    payload, created_at = row.payload, row.created_at
    row.delete()
    assert backend.drain_usage_stream() == 1
    usage_rollup_fold()
    day = UsageRollup.objects.get(team=team, granularity="day")
    assert (day.requests, day.total_tokens) == (2, 120)
    UnansweredScript.objects.create(
        kind="consume", team=team, request_id="req_quick", payload=payload, created_at=created_at
    )

    backend.sweep(now=AFTER_SWEEP_TIMEOUT)
    assert records(team) == [("warm", 50)]
    assert counts(backend, team) == before
    for granularity in ("hour", "day"):
        rollup = UsageRollup.objects.get(team=team, granularity=granularity)
        assert (rollup.requests, rollup.total_tokens) == (1, 50)
    assert UnansweredScript.objects.get(request_id="req_quick").resolved_at is not None
    backend.sweep(now=AFTER_SWEEP_TIMEOUT)  # again: nothing more given back
    assert counts(backend, team) == before


@pytest.mark.parametrize("lost", ["answer", "call"])
def test_a_settle_whose_answer_is_lost_records_the_stream_once(backend, proxy, team, lost, report):
    before = counts(backend, team)
    decision = backend.reserve(team_id=team.id, request_id="s-1", limits=LIMITS, tokens=200, now=NOW, request_hash="h")
    assert decision.allowed
    proxy.mode = "drop_replies" if lost == "answer" else "drop_all"
    with pytest.raises(QuotaBackendUnavailable):
        backend.settle(reservation=decision.reservation, event=event_for(team, "s-1", tokens=90, request_hash="h"))
    proxy.mode = "pass"
    assert UnansweredScript.objects.get(kind="settle", request_id="s-1").resolved_at is None

    # Past the reservation timeout: the sweeper settles it (or finds it settled) instead of refunding it.
    swept = backend.sweep(now=AFTER_SWEEP_TIMEOUT)
    assert swept == 0
    while backend.drain_usage_stream():
        pass
    assert records(team) == [("s-1", 90), ("warm", 50)]
    assert counts(backend, team) == (before[0] + 1, before[1] + 90)
    assert UnansweredScript.objects.get(kind="settle", request_id="s-1").resolved_at is not None
    backend.sweep(now=AFTER_SWEEP_TIMEOUT)
    while backend.drain_usage_stream():
        pass
    assert records(team) == [("s-1", 90), ("warm", 50)]
    report(f"[faults] settle {lost} lost: 1 record after the sweep, counters {counts(backend, team)}")


def test_a_settle_still_unanswered_keeps_its_reservation_from_the_sweeper(backend, proxy, private_redis, team):
    decision = backend.reserve(team_id=team.id, request_id="s-2", limits=LIMITS, tokens=200, now=NOW, request_hash="h")
    proxy.mode = "drop_all"
    with pytest.raises(QuotaBackendUnavailable):
        backend.settle(reservation=decision.reservation, event=event_for(team, "s-2", tokens=90, request_hash="h"))
    # Redis still unreachable for the sweeper's settle: the reservation stays, the row stays open.
    direct = RedisQuotaBackend(url=private_redis.url, read_timeout=READ_TIMEOUT)
    try:
        with pytest.raises(QuotaBackendUnavailable):
            backend.settle_again(UnansweredScript.objects.get(request_id="s-2").payload)
        assert direct.client.zcard(direct.reservations) == 1
        proxy.mode = "pass"
        assert direct.sweep(now=AFTER_SWEEP_TIMEOUT) == 0  # settled again, not refunded
        while direct.drain_usage_stream():
            pass
        assert records(team) == [("s-2", 90), ("warm", 50)]
    finally:
        direct.close()
