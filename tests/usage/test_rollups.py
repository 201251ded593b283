"""Rollups: the incremental fold equals a direct aggregation of the records, exactly once, and the
selectors serve the series from them (plus the records not folded yet)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from accounts import services
from accounts.selectors import team_for_user
from tiers import services as tier_services
from usage.models import RollupCursor, UsageRecord, UsageRollup
from usage.quotas.base import UsageEvent
from usage.rollups import usage_rollup_fold, usage_rollup_fold_settled, usage_rollup_rebuild
from usage.selectors import usage_series, usage_totals_by_model
from usage.services import usage_records_create

SMALL, BIG = "Llama-3.3-8B-Instruct", "Llama-3.3-70B-Instruct"
T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)


def _hour(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def _day(value: datetime) -> datetime:
    return _hour(value).replace(hour=0)


def rollups_by_aggregation() -> dict[tuple, tuple[int, int, int, int]]:
    """What the rollups must hold, computed straight from the records in Python."""
    expected: dict[tuple, list[int]] = {}
    for r in UsageRecord.objects.all():
        for granularity, bucket in (("hour", _hour(r.created_at)), ("day", _day(r.created_at))):
            key = (granularity, bucket, r.team_id, r.api_key_id or 0, r.model, r.partner_id or 0)
            sums = expected.setdefault(key, [0, 0, 0, 0])
            for i, value in enumerate((1, r.prompt_tokens, r.completion_tokens, r.total_tokens)):
                sums[i] += value
    return {key: tuple(sums) for key, sums in expected.items()}


def rollups_stored() -> dict[tuple, tuple[int, int, int, int]]:
    return {
        (r.granularity, r.bucket_start, r.team_id, r.api_key_id, r.model, r.partner_id): (
            r.requests,
            r.prompt_tokens,
            r.completion_tokens,
            r.total_tokens,
        )
        for r in UsageRollup.objects.all()
    }


@pytest.fixture
def teams(catalog):
    a = team_for_user(user=tier_services.user_create(email="a@example.com"))
    b = team_for_user(user=tier_services.user_create(email="b@example.com"))
    key_a, _ = services.api_key_create(team=a, name="one")
    key_a2, _ = services.api_key_create(team=a, name="two")
    return a, b, key_a, key_a2


def _history(teams, *, n: int = 300, seed: int = 7, prefix: str = "r") -> list[UsageEvent]:
    """Three days of random traffic: two teams, two keys and no key, two models, a partner channel."""
    a, b, key_a, key_a2 = teams
    rng = random.Random(seed)
    events = []
    for i in range(n):
        team, key = rng.choice([(a, key_a.pk), (a, key_a2.pk), (a, None), (b, None)])
        events.append(
            UsageEvent(
                request_id=f"{prefix}{i}",
                team_id=team.pk,
                api_key_id=key,
                model=rng.choice([SMALL, BIG]),
                prompt_tokens=rng.randint(1, 500),
                completion_tokens=rng.randint(0, 300),
                created_at=T0 + timedelta(seconds=rng.randint(0, 3 * 86400 - 1), microseconds=rng.randint(0, 999999)),
                partner_id=rng.choice([None, None, 42]),
            )
        )
    return events


@pytest.mark.django_db
def test_fold_equals_direct_aggregation_and_a_second_fold_adds_nothing(teams):
    assert usage_records_create(events=_history(teams)) == 300
    assert usage_rollup_fold(batch_size=64) == 300  # several batches, each its own transaction
    stored = rollups_stored()
    assert stored == rollups_by_aggregation()
    assert {key[0] for key in stored} == {"hour", "day"}
    assert any(key[5] == 42 for key in stored) and any(key[3] == 0 for key in stored)  # channel and "no key"
    assert RollupCursor.objects.get(name="usage").last_record_id == UsageRecord.objects.latest("id").pk

    assert usage_rollup_fold() == 0
    assert rollups_stored() == stored


@pytest.mark.django_db
def test_fold_and_rebuild_run_with_query_logging_on(teams, django_assert_max_num_queries):
    # DEBUG=True (make run) logs every query by formatting it with its parameters: a bare % in the
    # SQL (strftime's %Y on SQLite) would fail there. Query capture uses the same logging cursor.
    assert usage_records_create(events=_history(teams)) == 300
    with django_assert_max_num_queries(50):
        assert usage_rollup_fold() == 300
        usage_rollup_rebuild(start=T0 - timedelta(days=40), end=T0 + timedelta(days=40))
    assert rollups_stored() == rollups_by_aggregation()


@pytest.mark.django_db
def test_a_late_record_lands_in_its_old_bucket_once(teams):
    a, _, key_a, _ = teams
    usage_records_create(events=_history(teams, n=50))
    usage_rollup_fold()
    old_bucket = datetime(2026, 3, 1, 5, tzinfo=UTC)
    before = UsageRollup.objects.filter(
        granularity="hour", bucket_start=old_bucket, team=a, model=SMALL, api_key_id=key_a.pk, partner_id=0
    ).first()
    late = UsageEvent(
        request_id="late-1", team_id=a.pk, api_key_id=key_a.pk, model=SMALL, prompt_tokens=7, completion_tokens=3,
        created_at=old_bucket + timedelta(minutes=59, seconds=59),
    )  # fmt: skip
    assert usage_records_create(events=[late]) == 1  # a new id, well above the cursor, with an old time
    assert usage_rollup_fold() == 1
    assert usage_rollup_fold() == 0
    after = UsageRollup.objects.get(
        granularity="hour", bucket_start=old_bucket, team=a, model=SMALL, api_key_id=key_a.pk, partner_id=0
    )
    assert after.requests == (before.requests if before else 0) + 1
    assert after.total_tokens == (before.total_tokens if before else 0) + 10
    assert rollups_stored() == rollups_by_aggregation()


@pytest.mark.django_db
def test_rebuild_reproduces_the_same_rows_and_repairs_damage(teams):
    usage_records_create(events=_history(teams))
    usage_rollup_fold()
    folded = rollups_stored()
    # Damage: a lost bucket and a wrong one; a rebuild of the whole range restores every row.
    UsageRollup.objects.filter(granularity="hour").order_by("id").first().delete()
    UsageRollup.objects.filter(granularity="day").update(requests=0)
    assert usage_rollup_rebuild(start=T0, end=T0 + timedelta(days=3)) == 300
    assert rollups_stored() == folded

    # A rebuild of part of the range (not aligned to hours) leaves the rows as they were too.
    usage_rollup_rebuild(start=T0 + timedelta(hours=30, minutes=10), end=T0 + timedelta(hours=31, minutes=5))
    assert rollups_stored() == folded


@pytest.mark.django_db
def test_rebuild_leaves_unfolded_records_to_the_next_fold(teams):
    usage_records_create(events=_history(teams, n=100))
    usage_rollup_fold()
    usage_records_create(events=_history(teams, n=40, seed=9, prefix="later"))  # not folded yet
    usage_rollup_rebuild(start=T0, end=T0 + timedelta(days=3))
    assert usage_rollup_fold() == 40
    assert rollups_stored() == rollups_by_aggregation()


@pytest.mark.django_db
def test_settled_fold_on_postgresql_folds_up_to_the_previous_runs_horizon(teams):
    from django.db import connection

    usage_records_create(events=_history(teams, n=30))
    if connection.vendor != "postgresql":
        # SQLite commits one writer at a time, in id order: nothing can appear below the cursor later.
        assert usage_rollup_fold_settled() == 30
        return
    assert usage_rollup_fold_settled() == 0  # the first run only notes how far the ids went
    usage_records_create(events=_history(teams, n=5, seed=3, prefix="next"))
    assert usage_rollup_fold_settled() == 30  # the ids seen a run ago; the 5 newer ones wait
    assert usage_rollup_fold_settled() == 5
    assert rollups_stored() == rollups_by_aggregation()


@pytest.mark.django_db
def test_series_and_totals_come_from_rollups_plus_the_unfolded_tail(teams, django_assert_max_num_queries):
    a = teams[0]
    events = _history(teams)
    usage_records_create(events=events[:200])
    usage_rollup_fold()
    usage_records_create(events=events[200:])  # the tail: not folded yet, still counted

    def direct(granularity: str) -> list[dict]:
        trunc = _hour if granularity == "hour" else _day
        sums: dict[tuple, Counter] = {}
        for r in UsageRecord.objects.filter(team=a):
            c = sums.setdefault((trunc(r.created_at), r.model), Counter())
            c.update(
                requests=1,
                prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens,
                total_tokens=r.total_tokens,
            )
        return [{"period": p, "model": m, **sums[(p, m)]} for p, m in sorted(sums)]

    for granularity in ("day", "hour"):
        with django_assert_max_num_queries(1):
            series = usage_series(team_id=a.pk, start=T0, end=T0 + timedelta(days=3), granularity=granularity)
        assert series == direct(granularity)
    only_big = usage_series(team_id=a.pk, start=T0, end=T0 + timedelta(days=3), granularity="day", model=BIG)
    assert only_big == [row for row in direct("day") if row["model"] == BIG]

    # Totals over a window with partial hours at both edges are exact to the microsecond.
    start, end = T0 + timedelta(hours=5, minutes=17), T0 + timedelta(days=2, hours=3, minutes=41)
    expected: dict[str, int] = Counter()
    for r in UsageRecord.objects.filter(team=a, created_at__gte=start, created_at__lt=end):
        expected[r.model] += r.total_tokens
    with django_assert_max_num_queries(1):
        totals = usage_totals_by_model(team_id=a.pk, start=start, end=end)
    assert {row["model"]: row["total_tokens"] for row in totals} == expected


@pytest.mark.django_db
def test_fold_task_runs_the_settled_fold(teams):
    from usage.tasks import usage_rollup_fold as task

    usage_records_create(events=_history(teams, n=10))
    with time_machine.travel(T0 + timedelta(days=3), tick=False):
        task.apply()
        task.apply()
    # Both runs together fold everything (on PostgreSQL the first run only notes the horizon).
    assert sum(r.requests for r in UsageRollup.objects.filter(granularity="day")) == 10


@pytest.mark.django_db(transaction=True)
def test_concurrent_folds_never_double_count(teams):
    """Four folds racing over the same backlog (real threads, each with its own connection): the cursor
    row lock lets each record be folded by exactly one of them."""
    import threading

    from django.db import connection

    usage_records_create(events=_history(teams, n=400))
    results: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def fold() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(usage_rollup_fold(batch_size=50))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=fold) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sum(results) == 400
    assert rollups_stored() == rollups_by_aggregation()
