"""Redis stopped (SIGTERM) and restarted from its append-only file while the model API answers (issue
12, item 1): every request answered 2xx has exactly one usage record, no request answered otherwise
has one, and the quota counters equal the records.

Real processes only: a private redis-server with AOF (appendfsync everysec, as production requires),
gunicorn (2 sync workers) serving the model API with the Redis quota backend, and a Celery worker and
beat draining the usage stream into the test database. 2,000 requests, paced over about 25 s by a few
client threads, each with its own X-Request-Id so an answer and a record can be matched; Redis is
stopped with SIGTERM about 8 s in, kept down for 6 s, then started again on the same port from its own
files. The counts are printed in the test output.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from django.db.models import Sum

from accounts.selectors import team_for_user
from accounts.services import api_key_create
from tests.faults.servers_ops import AOF_EVERYSEC, gunicorn, redis_server
from tests.helpers_celery import celery_worker_and_beat, subprocess_environment
from tiers import services as tier_services
from tiers.models import Tier
from usage.models import UsageRecord

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

REQUESTS = 2_000
RATE_PER_SECOND = 80  # 2,000 requests in 25 s
CLIENTS = 6
REDIS_DOWN_AT_SECONDS = 8.0
REDIS_DOWN_FOR_SECONDS = 6.0
LOAD_DEADLINE_SECONDS = 120.0
DRAIN_DEADLINE_SECONDS = 90.0
MODEL = "Llama-3.3-8B-Instruct"
BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}], "max_completion_tokens": 16}
)


def _send(port: int, secret: str, request_id: str) -> int | None:
    """POST one chat completion; its status, or None if no HTTP answer came (connection failed)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=BODY,
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {secret}",
                "X-Request-Id": request_id,
            },
        )
        response = conn.getresponse()
        response.read()
        conn.close()
        return response.status
    except OSError:
        return None


def _load(port: int, secret: str, on_tick) -> dict[str, int | None]:
    """Send REQUESTS requests, request i no earlier than i / RATE_PER_SECOND seconds after the start,
    from CLIENTS threads; ``on_tick(elapsed)`` is called by this thread every 50 ms meanwhile."""
    answers: dict[str, int | None] = {}
    lock = threading.Lock()
    next_index = iter(range(REQUESTS))
    started = time.monotonic()

    def client() -> None:
        while True:
            with lock:
                index = next(next_index, None)
            if index is None or time.monotonic() - started > LOAD_DEADLINE_SECONDS:
                return
            delay = started + index / RATE_PER_SECOND - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            request_id = f"redis-restart-{index}"
            status = _send(port, secret, request_id)
            with lock:
                answers[request_id] = status

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        on_tick(time.monotonic() - started)
        time.sleep(0.05)
    return answers


def _counters(client: redis.Redis, team_id: int, code: str) -> int:
    return sum(int(client.get(key) or 0) for key in client.scan_iter(f"tl:q:{team_id}:{code}:*"))


def test_every_answered_request_is_recorded_once_across_a_redis_restart(catalog, tmp_path: Path, monkeypatch, report):
    # A team on Pro, with limits no request here reaches: every refusal below is the fault's.
    Tier.objects.filter(slug="pro").update(
        requests_per_minute=1_000_000, tokens_per_minute=1_000_000_000, requests_per_day=1_000_000
    )
    user = tier_services.user_create(email="restart@example.com", password="restart-password-1", tier_slug="pro")
    team = team_for_user(user=user)
    _, secret = api_key_create(team=team, name="restart")

    with redis_server(tmp_path / "redis", *AOF_EVERYSEC) as server:
        # The web server, the worker and beat all use the Redis quota backend on this server.
        monkeypatch.setenv("TIERLAB_QUOTA_BACKEND", "redis")
        monkeypatch.setenv("REDIS_URL", server.url)
        env = subprocess_environment(tmp_path / "celery")
        env["DEBUG"] = "0"
        client = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=5)
        events: list[str] = []

        def fault(elapsed: float) -> None:
            if not events and elapsed >= REDIS_DOWN_AT_SECONDS:
                events.append(f"SIGTERM at {elapsed:.1f} s")
                server.stop()
            elif len(events) == 1 and elapsed >= REDIS_DOWN_AT_SECONDS + REDIS_DOWN_FOR_SECONDS:
                server.start()  # same port, same directory: it loads its AOF
                events.append(f"restarted at {elapsed:.1f} s")

        with celery_worker_and_beat(tmp_path / "celery") as workers, gunicorn(env, tmp_path / "web") as web:
            started = time.monotonic()
            answers = _load(web.port, secret, fault)
            load_seconds = time.monotonic() - started
            if len(events) == 1:  # the load ended before the restart was due
                server.start()
                events.append("restarted after the load")
            # As an SDK does, every request not answered 2xx is sent once more with its X-Request-Id: a
            # script Redis ran just before it stopped, whose answer was lost, is then answered from its
            # record (counted once); one it never ran is admitted now (README, "When the quota backend
            # fails"). Without a retry such a request keeps a record although its client saw a 503.
            first_statuses = Counter(answers.values())
            again = [request_id for request_id, status in answers.items() if status is None or status >= 300]
            with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
                for request_id, status in zip(
                    again, pool.map(lambda rid: _send(web.port, secret, rid), again), strict=True
                ):
                    answers[request_id] = status

            def drained() -> bool:
                return client.xlen("tl:usage-events") == 0 and UsageRecord.objects.filter(team=team).count() > 0

            workers.wait_for("usage stream drained", drained, timeout=DRAIN_DEADLINE_SECONDS)
            workers.assert_running()

        statuses = Counter(answers.values())
        answered = {request_id for request_id, status in answers.items() if status is not None and status < 300}
        records = UsageRecord.objects.filter(team=team)
        recorded = list(records.values_list("request_id", flat=True))
        tokens = records.aggregate(total=Sum("total_tokens"))["total"] or 0
        day_counter = _counters(client, team.pk, "rpd")
        token_counter = _counters(client, team.pk, "mtok")
        client.close()

    report(
        f"\nRedis restart (AOF everysec): {len(answers)} requests in {load_seconds:.1f} s, "
        f"{'; '.join(events)}; statuses {dict(sorted(first_statuses.items(), key=str))}, after one retry of each "
        f"non-2xx with its id {dict(sorted(statuses.items(), key=str))}\n"
        f"answered 2xx {len(answered)} / records {len(recorded)} (distinct {len(set(recorded))}) / "
        f"counters: requests today {day_counter}, tokens this period {token_counter} (records' tokens {tokens})"
    )
    assert len(events) == 2 and events[0].startswith("SIGTERM"), events
    assert len(answers) == REQUESTS, f"only {len(answers)} of {REQUESTS} requests were sent in time"
    assert sum(n for status, n in first_statuses.items() if status is None or status >= 300), (
        "no request failed: Redis was not down while the load ran"
    )
    assert answered, "no request was answered"
    assert len(recorded) == len(set(recorded)), "a request has more than one usage record"
    assert set(recorded) - answered == set(), f"records without a 2xx: {sorted(set(recorded) - answered)[:10]}"
    assert answered - set(recorded) == set(), f"2xx without a record: {sorted(answered - set(recorded))[:10]}"
    assert day_counter == len(recorded)
    assert token_counter == tokens
