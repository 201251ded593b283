"""Tokens used in a period: usage.selectors.tokens_used (one team: hour rollups plus the records they
do not cover) and tokens_used_by_period (a batch, what the period close bills overage from), both
exact to the microsecond over half-open [start, end) periods, and the same answers."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest
from django.db.models import F

from accounts.models import Team
from usage.models import UsageRecord, UsageRollup
from usage.quotas.base import UsageEvent
from usage.rollups import usage_rollup_fold
from usage.selectors import tokens_used, tokens_used_by_period, usage_period_totals, usage_totals_by_model
from usage.services import usage_records_create

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
SMALL, BIG = "Llama-3.3-8B-Instruct", "Llama-3.3-70B-Instruct"


@pytest.fixture
def teams(db) -> list[Team]:
    return [Team.objects.create(name=f"team {i}") for i in range(4)]


_request_ids = itertools.count(1)


def record(team: Team, at: datetime, tokens: int, *, model: str = SMALL) -> None:
    prompt = tokens // 2
    event = UsageEvent(
        request_id=f"t{next(_request_ids)}",
        team_id=team.pk,
        api_key_id=None,
        model=model,
        prompt_tokens=prompt,
        completion_tokens=tokens - prompt,
        created_at=at,
    )
    assert usage_records_create(events=[event]) == 1


def direct(team_id: int, start: datetime, end: datetime) -> int:
    """The answer straight from the records, in Python."""
    records = UsageRecord.objects.filter(team_id=team_id, created_at__gte=start, created_at__lt=end)
    return sum(records.values_list("total_tokens", flat=True))


@pytest.mark.django_db
def test_records_only_with_partial_hours_at_both_edges(teams):
    a = teams[0]
    start, end = T0 + timedelta(hours=5, minutes=17, microseconds=250), T0 + timedelta(days=1, hours=3, minutes=41)
    record(a, start - timedelta(microseconds=1), 1)  # just before: not counted
    record(a, start, 10)
    record(a, T0 + timedelta(hours=9), 20, model=BIG)
    record(a, end - timedelta(microseconds=1), 40)
    record(a, end, 80)  # at the end: the next period's
    assert tokens_used(team_id=a.pk, start=start, end=end) == 70 == direct(a.pk, start, end)
    assert usage_period_totals(team_id=a.pk, start=start, end=end) == (3, 70)
    assert usage_totals_by_model(team_id=a.pk, start=start, end=end) == [
        {"model": SMALL, "requests": 2, "prompt_tokens": 25, "completion_tokens": 25, "total_tokens": 50},
        {"model": BIG, "requests": 1, "prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    ]


@pytest.mark.django_db
def test_whole_hours_from_the_rollups_edges_and_unfolded_records_from_the_records(teams):
    a = teams[0]
    start, end = T0 + timedelta(hours=1, minutes=30), T0 + timedelta(hours=6, minutes=30)
    for minutes in range(0, 8 * 60, 20):  # every 20 minutes from T0 to T0 + 8 h
        record(a, T0 + timedelta(minutes=minutes), 100 + minutes)
    usage_rollup_fold()
    record(a, T0 + timedelta(hours=3, minutes=5), 7)  # inside a whole hour, not folded yet
    record(a, T0 + timedelta(hours=1, minutes=45), 3)  # in an edge hour, not folded yet
    expected = direct(a.pk, start, end)
    assert tokens_used(team_id=a.pk, start=start, end=end) == expected

    # The whole hours 02:00-06:00 are read from the hour rollups, the rest from the records: a rollup
    # changed behind the selector's back shows up only inside them (a check of where each part is
    # read, not something a real fold would do).
    UsageRollup.objects.filter(granularity="hour", bucket_start=T0 + timedelta(hours=4)).update(
        total_tokens=F("total_tokens") + 1_000
    )
    UsageRollup.objects.filter(granularity="hour", bucket_start=T0 + timedelta(hours=1)).update(
        total_tokens=F("total_tokens") + 1_000_000
    )
    assert tokens_used(team_id=a.pk, start=start, end=end) == expected + 1_000


@pytest.mark.django_db
def test_periods_are_half_open_on_hour_boundaries_too(teams):
    a = teams[0]
    start, end = T0 + timedelta(hours=2), T0 + timedelta(hours=4)
    for at, tokens in [
        (start - timedelta(microseconds=1), 1),
        (start, 10),
        (start + timedelta(hours=1), 20),
        (end - timedelta(microseconds=1), 40),
        (end, 80),
    ]:
        record(a, at, tokens)
    assert tokens_used(team_id=a.pk, start=start, end=end) == 70
    usage_rollup_fold()  # now every counted token comes from the rollups of 02:00 and 03:00
    assert tokens_used(team_id=a.pk, start=start, end=end) == 70
    assert tokens_used(team_id=a.pk, start=end, end=end + timedelta(hours=1)) == 80
    # Less than an hour inside a folded hour: the records alone.
    assert tokens_used(team_id=a.pk, start=start + timedelta(minutes=30), end=end) == 60


@pytest.mark.django_db
def test_a_batch_answers_each_team_for_its_own_period_in_one_query(teams, django_assert_num_queries):
    a, b, c, idle = teams
    rng = random.Random(11)
    for i in range(240):
        team = rng.choice([a, b, c])
        record(team, T0 + timedelta(seconds=rng.randint(0, 3 * 86400 - 1), microseconds=rng.randint(0, 999_999)), i)
        if i == 150:
            usage_rollup_fold()
    periods = [
        (a.pk, T0 + timedelta(hours=5, minutes=17), T0 + timedelta(days=2, hours=3, minutes=41)),
        (b.pk, T0, T0 + timedelta(days=1)),
        (c.pk, T0 + timedelta(days=1, hours=12), T0 + timedelta(days=1, hours=12, minutes=30)),
        (idle.pk, T0, T0 + timedelta(days=3)),
    ]
    with django_assert_num_queries(1):
        used = tokens_used_by_period(periods=periods)
    assert used == {team_id: direct(team_id, start, end) for team_id, start, end in periods}
    assert used[idle.pk] == 0 and all(used[team.pk] > 0 for team in (a, b, c))
    for team_id, start, end in periods:
        assert tokens_used(team_id=team_id, start=start, end=end) == used[team_id]


@pytest.mark.django_db
def test_a_team_without_usage_and_an_empty_batch(teams, django_assert_num_queries):
    assert tokens_used(team_id=teams[0].pk, start=T0, end=T0 + timedelta(days=30)) == 0
    assert usage_period_totals(team_id=teams[0].pk, start=T0, end=T0 + timedelta(days=30)) == (0, 0)
    with django_assert_num_queries(0):
        assert tokens_used_by_period(periods=[]) == {}


@pytest.mark.django_db
def test_a_team_twice_in_one_batch_is_refused(teams):
    a = teams[0]
    with pytest.raises(ValueError, match="more than one period"):
        tokens_used_by_period(periods=[(a.pk, T0, T0 + timedelta(days=1)), (a.pk, T0, T0 + timedelta(days=2))])
