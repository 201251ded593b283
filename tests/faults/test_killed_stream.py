"""Issue 12, item 3: a process killed mid-stream (SIGKILL) leaves a reservation nobody settles. Before:
its request id then answered every retry for free and unrecorded for 48 h, and the counters kept the
reserved tokens with no record behind them. Now the id stays pending (409 request_id_in_progress)
until the sweeper (the periodic Celery task) refunds the reservation after
TIERLAB_RESERVATION_TIMEOUT_SECONDS; a retry is then a new request, counted and recorded once.

On both quota backends: the child that streams and the gunicorn that answers the retries share the
test's database (and the private Redis).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from django.db.models import Sum
from django.utils import timezone

from tests.faults.conftest import SMALL, app_environment, http_request
from tests.helpers_celery import BASE_DIR
from tiers.selectors import entitlements_for_team
from usage.metering import limits_for
from usage.models import QuotaReservation, UsageRecord
from usage.quotas import get_quota_backend, reset_quota_backend_cache
from usage.quotas.base import LimitName
from usage.tasks import usage_reservations_sweep

REQUEST_ID = "crash-stream-1"
BODY = {
    "model": SMALL,
    "messages": [{"role": "user", "content": "Tell me about llamas and their wool."}],
    "stream": True,
}


def _stream_then_get_killed(tmp_path, *, backend: str, redis_url: str, secret: str) -> str:
    env = app_environment(tmp_path / "child", backend=backend, redis_url=redis_url)
    env.update(TIERLAB_FAULT_SECRET=secret, TIERLAB_FAULT_REQUEST_ID=REQUEST_ID)
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.stream_child"], cwd=BASE_DIR, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("streaming"):
                child.send_signal(signal.SIGKILL)  # mid-stream: admitted, first event sent, never settled
                child.wait(timeout=10)
                return "".join(lines)
        pytest.fail(f"the child did not start streaming:\n{''.join(lines)}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        child.stdout.close()


@pytest.mark.parametrize("backend", ["database", "redis"])
def test_a_stream_whose_process_was_killed_is_refunded_by_the_sweeper_then_a_retry_counts_once(
    request, tmp_path, fault_account, serve_app, settings, backend, capsys
):
    team, secret = fault_account
    redis_url = request.getfixturevalue("private_redis").url if backend == "redis" else ""
    # This process runs the sweeper task on the same backend as the servers.
    settings.TIERLAB_QUOTA_BACKEND = backend
    settings.REDIS_URL = redis_url or settings.REDIS_URL
    reset_quota_backend_cache()
    request.addfinalizer(reset_quota_backend_cache)
    limits = limits_for(entitlements=entitlements_for_team(team_id=team.id), now=timezone.now())

    output = _stream_then_get_killed(tmp_path, backend=backend, redis_url=redis_url, secret=secret)
    used_after_crash = get_quota_backend().used(team_id=team.id, limits=limits)
    assert used_after_crash[LimitName.REQUESTS_PER_DAY] == 1, output  # reserved, and nobody will settle it

    server = serve_app(backend=backend, secret=secret, redis_url=redis_url)
    status, headers, content = http_request(server.port, "POST", "/v1/chat/completions", secret=secret, body=BODY,
                                            request_id=REQUEST_ID)  # fmt: skip
    assert status == 409 and json.loads(content)["error"]["code"] == "request_id_in_progress"
    assert headers["retry-after"] == "1"

    # The sweeper, once the reservation is older than the timeout (1 s here instead of 300 s).
    assert usage_reservations_sweep() == 0  # not abandoned yet
    settings.TIERLAB_RESERVATION_TIMEOUT_SECONDS = 1
    time.sleep(1.1)
    assert usage_reservations_sweep() == 1
    assert get_quota_backend().used(team_id=team.id, limits=limits)[LimitName.REQUESTS_PER_DAY] == 0
    assert QuotaReservation.objects.count() == 0

    # The id is free: the retry is a new request, counted and recorded once; its retry is answered again.
    answers = [
        http_request(server.port, "POST", "/v1/chat/completions", secret=secret, body=BODY, request_id=REQUEST_ID)
        for _ in range(2)
    ]
    assert [status for status, _, _ in answers] == [200, 200]
    assert answers[0][2] == answers[1][2] and b'"event_type":"metrics"' in answers[0][2]

    if backend == "redis":
        get_quota_backend().drain_usage_stream()
    records = UsageRecord.objects.filter(team=team)
    tokens = records.aggregate(total=Sum("total_tokens"))["total"]
    used = get_quota_backend().used(team_id=team.id, limits=limits)
    with capsys.disabled():
        print(
            f"\n[faults] {backend}: stream killed mid-way, swept, retried twice: answers "
            f"{[status for status, _, _ in answers]}, records {records.count()} ({tokens} tokens), "
            f"counters {used[LimitName.REQUESTS_PER_DAY]} requests / {used[LimitName.MONTHLY_TOKENS]} tokens"
        )
    assert list(records.values_list("request_id", flat=True)) == [REQUEST_ID]
    assert (used[LimitName.REQUESTS_PER_DAY], used[LimitName.MONTHLY_TOKENS]) == (1, tokens)
