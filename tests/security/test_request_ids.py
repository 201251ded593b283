"""Issue 11, finding 1: a reused ``X-Request-Id`` bypassed every limit. Over HTTP with a free key, on
both quota backends, streamed and not (DESIGN.md "Request ids": the same id with the same request is
answered again and counted once; with a different request it is refused with 409 and counts nothing;
an id whose request was refused may be used again), and issue 11's edge cases: an id is pending from the
moment it is reserved, and one retention applies on both backends."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.test import Client

from accounts import services
from accounts.selectors import api_key_cache_clear, team_for_user
from tests.usage.conftest import redis_server  # noqa: F401 - the fixture, for this directory too
from tests.usage.test_quota_contract import redis_backend
from tiers import services as tier_services
from tiers.selectors import entitlements_cache_clear
from usage.metering import metering_caches_clear
from usage.models import UsageRecord
from usage.quotas import reset_quota_backend_cache
from usage.quotas.redis import drain_usage_stream

CHAT = "/v1/chat/completions"
COMPAT_CHAT = "/compat/v1/chat/completions"
SMALL = "Llama-3.3-8B-Instruct"
FREE_RPM = 10  # the seed catalog's free tier
# A fixed clock a few seconds into a minute, so the per-minute window cannot roll over mid-test.
T0 = datetime(2026, 6, 10, 12, 0, 5, tzinfo=UTC)


def _caches_clear() -> None:
    reset_quota_backend_cache()
    api_key_cache_clear()
    entitlements_cache_clear()
    metering_caches_clear()


@pytest.fixture(params=["database", "redis"])
def quota_backend(request, settings, monkeypatch) -> Iterator[str]:
    """The model API on one quota backend; Redis under a key prefix of this test's own."""
    _caches_clear()
    settings.TIERLAB_QUOTA_BACKEND = "database"
    if request.param == "database":
        yield request.param
    else:
        for backend in redis_backend(request.getfixturevalue("redis_server")):
            monkeypatch.setattr("usage.quotas._backend", backend)
            yield request.param
    _caches_clear()


@pytest.fixture
def clock() -> Iterator[time_machine.Coordinates]:
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def free_key(catalog, quota_backend, clock):
    user = tier_services.user_create(email=f"free-{quota_backend}@example.com")
    team = team_for_user(user=user)
    _, secret = services.api_key_create(team=team, name="free")
    return team, secret


def chat(secret: str, prompt: str, *, request_id: str | None = None, stream: bool = False, path: str = CHAT):
    body = {
        "model": SMALL,
        "messages": [{"role": "user", "content": prompt}],
        "max_completion_tokens": 150,
        "stream": stream,
    }
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    if request_id is not None:
        headers["HTTP_X_REQUEST_ID"] = request_id
    response = Client().post(path, json.dumps(body), content_type="application/json", **headers)
    # A streamed request is settled when its stream ends: read it to the end, as a client does.
    content = b"".join(response.streaming_content) if response.streaming else response.content
    return response, content


def records_of(team) -> list[UsageRecord]:
    drain_usage_stream()  # Redis: the usage stream into records; database: nothing to drain
    return list(UsageRecord.objects.filter(team=team))


def assert_reused(response, content: bytes) -> None:
    assert response.status_code == 409
    assert json.loads(content) == {
        "error": {
            "message": json.loads(content)["error"]["message"],
            "type": "invalid_request_error",
            "code": "request_id_reused",
            "param": "X-Request-Id",
        }
    }


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_findings_sequence_is_refused_and_records_nothing_beyond_the_first(free_key, stream):
    team, secret = free_key
    first, _ = chat(secret, "prompt 0", request_id="dup-X", stream=stream)
    assert first.status_code == 200

    # Before the limit too: another prompt under the same id is refused and counts nothing, so the
    # minute still has room for exactly FREE_RPM - 1 more requests.
    assert_reused(*chat(secret, "another prompt", request_id="dup-X", stream=stream))
    for number in range(FREE_RPM - 1):
        assert chat(secret, f"filler {number}", stream=stream)[0].status_code == 200
    limited, _ = chat(secret, "one too many", stream=stream)
    assert limited.status_code == 429

    for number in range(1, 16):
        response, content = chat(secret, f"prompt {number}", request_id="dup-X", stream=stream)
        assert_reused(response, content)

    records = records_of(team)
    assert len(records) == FREE_RPM
    assert [r.request_id for r in records].count("dup-X") == 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_an_identical_replay_is_answered_again_with_the_same_completion_and_counted_once(free_key, stream):
    team, secret = free_key
    first, first_content = chat(secret, "What is a llama?", request_id="dup-Y", stream=stream)
    again, again_content = chat(secret, "What is a llama?", request_id="dup-Y", stream=stream)
    assert first.status_code == again.status_code == 200
    assert again_content == first_content

    # The same id and body on the other endpoint is a different request.
    assert_reused(*chat(secret, "What is a llama?", request_id="dup-Y", stream=stream, path=COMPAT_CHAT))

    records = records_of(team)
    assert [r.request_id for r in records] == ["dup-Y"]
    assert len(records[0].request_hash) == 64
    # Counted once: the minute still has room for FREE_RPM - 1 other requests, not one less.
    for number in range(FREE_RPM - 1):
        assert chat(secret, f"filler {number}")[0].status_code == 200
    assert chat(secret, "one too many")[0].status_code == 429


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_request_id_refused_with_429_may_be_used_again(free_key, clock, stream):
    team, secret = free_key
    for number in range(FREE_RPM):
        assert chat(secret, f"filler {number}")[0].status_code == 200
    refused, _ = chat(secret, "first try", request_id="retry-me", stream=stream)
    assert refused.status_code == 429

    clock.shift(timedelta(minutes=1))
    retried, _ = chat(secret, "second try, reworded", request_id="retry-me", stream=stream)
    assert retried.status_code == 200

    records = records_of(team)
    assert len(records) == FREE_RPM + 1
    assert [r.request_id for r in records].count("retry-me") == 1


# --- issue 11 (a, b): a pending id, one retention ------------------------------------------------------


def start_stream(secret: str, prompt: str, *, request_id: str, path: str = CHAT):
    """A streamed request admitted and not finished: its response is not read yet (the stream settles
    when it ends)."""
    body = {"model": SMALL, "messages": [{"role": "user", "content": prompt}], "stream": True}
    response = Client().post(
        path, json.dumps(body), content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}", HTTP_X_REQUEST_ID=request_id,
    )  # fmt: skip
    assert response.status_code == 200 and response.streaming
    return response


@pytest.mark.parametrize("path", [CHAT, COMPAT_CHAT], ids=["native", "compat"])
def test_a_request_racing_an_unfinished_one_under_its_id_is_refused_and_not_counted(free_key, path):
    team, secret = free_key
    first = start_stream(secret, "What is a llama?", request_id="racing-1", path=path)

    same = Client().post(
        path,
        json.dumps({"model": SMALL, "messages": [{"role": "user", "content": "What is a llama?"}], "stream": True}),
        content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}", HTTP_X_REQUEST_ID="racing-1",
    )  # fmt: skip
    assert same.status_code == 409 and same["Retry-After"] == "1"
    assert json.loads(same.content)["error"] == {
        "message": json.loads(same.content)["error"]["message"],
        "type": "invalid_request_error",
        "code": "request_id_in_progress",
        "param": "X-Request-Id",
    }
    assert_reused(*chat(secret, "another prompt", request_id="racing-1", stream=True, path=path))
    assert_reused(*chat(secret, "What is a llama?", request_id="racing-1", path=path))  # not streamed: another body

    first_content = b"".join(first.streaming_content)  # the first one finishes: settled and recorded
    again = start_stream(secret, "What is a llama?", request_id="racing-1", path=path)
    assert b"".join(again.streaming_content) == first_content

    records = records_of(team)
    assert [r.request_id for r in records] == ["racing-1"]
    # Counted once: the minute has room for FREE_RPM - 1 other requests.
    for number in range(FREE_RPM - 1):
        assert chat(secret, f"filler {number}")[0].status_code == 200
    assert chat(secret, "one too many")[0].status_code == 429


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_after_the_retention_an_id_is_free_for_a_new_request_counted_and_recorded_once(
    free_key, clock, settings, stream
):
    team, secret = free_key
    settings.TIERLAB_REQUEST_ID_RETENTION_SECONDS = 1
    assert chat(secret, "first use", request_id="daily-1", stream=stream)[0].status_code == 200
    records_of(team)  # drained while the id is bound

    # The database backend reads the request's clock; Redis forgets the id when its key expires.
    clock.shift(timedelta(seconds=2))
    time.sleep(1.1)
    second, _ = chat(secret, "second use, another body", request_id="daily-1", stream=stream)
    assert second.status_code == 200
    assert chat(secret, "second use, another body", request_id="daily-1", stream=stream)[0].status_code == 200

    records = records_of(team)
    # Two records: the first gave the id up to the second.
    assert [(r.request_id, r.request_key) for r in sorted(records, key=lambda r: r.id)] == [
        ("daily-1", None),
        ("daily-1", "daily-1"),
    ]
    for number in range(FREE_RPM - 2):
        assert chat(secret, f"filler {number}")[0].status_code == 200
    assert chat(secret, "one too many")[0].status_code == 429
