"""Partner ingest and statements under real concurrency on PostgreSQL: two transactions at once,
each on its own connection, the unique constraints deciding."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime

import pytest
from django.db import connection, transaction

from partners import services as partners
from partners import statements as partner_statements
from partners.models import PartnerStatement, PartnerStatementLine, PartnerUsageEvent

pytestmark = pytest.mark.integration

THREAD_TIMEOUT = 30
NOW = datetime(2026, 3, 5, 12, tzinfo=UTC)


def _in_thread(target: Callable[[], object], outcomes: dict[str, object], name: str) -> threading.Thread:
    def run() -> None:
        try:
            outcomes[name] = target()
        except Exception as exc:
            outcomes[name] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def _backends_waiting_on_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def _wait_for_a_waiter() -> None:
    deadline = time.monotonic() + THREAD_TIMEOUT
    while _backends_waiting_on_a_lock() == 0:
        assert time.monotonic() < deadline, "the second transaction never waited for the first"
        time.sleep(0.02)


def _events(n: int) -> list[dict]:
    return [
        {
            "event_id": f"ev-{i}",
            "customer": f"c{i % 7}",
            "model": "Llama-3.3-70B-Instruct",
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "amount_cents": 3,
            "currency": "usd",
            "time": "2026-02-20T10:00:00Z",
        }
        for i in range(n)
    ]


@pytest.mark.django_db(transaction=True)
def test_the_same_batch_in_two_transactions_at_once_is_accepted_once():
    partner, _ = partners.partner_create(slug="pg", name="PG", share_bps=1000, contact_email="p@pg.example", now=NOW)
    batch = _events(1000)
    outcomes: dict[str, object] = {}
    first_inserted, first_may_commit = threading.Event(), threading.Event()

    def first():
        with transaction.atomic():
            result = partners.partner_usage_events_ingest(partner_id=partner.pk, events=batch, now=NOW)
            first_inserted.set()
            first_may_commit.wait(THREAD_TIMEOUT)
        return result

    def second():
        return partners.partner_usage_events_ingest(partner_id=partner.pk, events=batch, now=NOW)

    a = _in_thread(first, outcomes, "first")
    assert first_inserted.wait(THREAD_TIMEOUT)
    b = _in_thread(second, outcomes, "second")
    _wait_for_a_waiter()  # the second INSERT waits on the first's uncommitted keys, then skips them
    first_may_commit.set()
    a.join(THREAD_TIMEOUT)
    b.join(THREAD_TIMEOUT)
    one, two = outcomes["first"], outcomes["second"]
    assert (one.accepted, one.duplicates) == (1000, 0), one
    assert (two.accepted, two.duplicates) == (0, 1000), two
    assert PartnerUsageEvent.objects.filter(partner=partner).count() == 1000


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_batch_leaves_its_events_to_the_concurrent_one():
    partner, _ = partners.partner_create(slug="pg2", name="PG2", share_bps=1000, contact_email="p@pg.example", now=NOW)
    batch = _events(200)
    outcomes: dict[str, object] = {}
    first_inserted, first_may_end = threading.Event(), threading.Event()

    class Abort(Exception):
        pass

    def first():
        with transaction.atomic():
            partners.partner_usage_events_ingest(partner_id=partner.pk, events=batch, now=NOW)
            first_inserted.set()
            first_may_end.wait(THREAD_TIMEOUT)
            raise Abort

    a = _in_thread(first, outcomes, "first")
    assert first_inserted.wait(THREAD_TIMEOUT)
    b = _in_thread(
        lambda: partners.partner_usage_events_ingest(partner_id=partner.pk, events=batch, now=NOW), outcomes, "second"
    )
    _wait_for_a_waiter()
    first_may_end.set()
    a.join(THREAD_TIMEOUT)
    b.join(THREAD_TIMEOUT)
    assert isinstance(outcomes["first"], Abort)
    assert outcomes["second"].accepted == 200  # nothing lost when the other transaction did not commit
    assert PartnerUsageEvent.objects.filter(partner=partner).count() == 200


@pytest.mark.django_db(transaction=True)
def test_two_statement_issues_at_once_give_one_statement_counting_each_event_once():
    partner, _ = partners.partner_create(
        slug="pg3", name="PG3", share_bps=1000, contact_email="p@pg.example", now=datetime(2026, 1, 1, tzinfo=UTC)
    )
    partners.partner_usage_events_ingest(partner_id=partner.pk, events=_events(300), now=NOW)
    outcomes: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def issue():
        barrier.wait(THREAD_TIMEOUT)
        return partner_statements.partner_statement_issue(partner=partner, month=date(2026, 2, 1), now=NOW).pk

    threads = [_in_thread(issue, outcomes, name) for name in ("a", "b")]
    for thread in threads:
        thread.join(THREAD_TIMEOUT)
    assert outcomes["a"] == outcomes["b"], outcomes
    assert PartnerStatement.objects.filter(partner=partner).count() == 1
    line = PartnerStatementLine.objects.get(statement__partner=partner)
    assert (line.events, line.revenue_cents, line.share_cents) == (300, 900, 90)
