"""The database quota backend with its disk nearly full, with real processes (issue 12, item 5): every
request answered 2xx has exactly one usage record, no request has a record without a 2xx, the quota
counters equal the records, and the refusals while the disk is full are 503 in the model API's JSON
error shape with Retry-After.

The embedded default (``config.settings``: SQLite in WAL mode, ``TIERLAB_QUOTA_BACKEND=database``) is
served by gunicorn with its database file on a tmpfs of the test's own, migrated and seeded there by a
subprocess: the test does not use the suite's database (SQLite or PostgreSQL), so it runs in both of
CI's runs. A filler file then takes all the space but HEADROOM_BYTES, a burst of requests (streamed and
not, native and compatible, each with its own X-Request-Id) is sent, the filler is removed, a few more
requests are sent, the sweeper runs as beat would once the reservation timeout has passed, and the
database file is read with SQL. Mounting needs root (CI runs as root); elsewhere the test is skipped.

A stream is reserved, sent, then settled: with the disk nearly full its reservation may commit and its
settle fail (the issue's "reserve committed and settle failed"). The stream then ends with an error
event instead of its closing events, so its client knows it was not answered, and the sweeper refunds
its reservation: the counters hold exactly the pending reservations until then, and equal the records
after.
"""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from tests.faults.servers_ops import BASE_DIR, gunicorn, tmpfs
from usage.models import QuotaReservation, TeamQuotaState, UsageRecord

TMPFS_SIZE = "8m"  # the database after migrate and seed is about 0.8 MB
# Measured (SQLite 3.40, 4 KiB pages, 4,120-byte WAL frames): a stream's reservation appends 6 frames
# to the WAL, its settle 13 (the usage record and its indexes), a non-streamed request 9. 32 KiB, plus
# what is left of the WAL's last 4 KiB, takes one reservation and neither a record nor a second
# reservation: the burst's first stream reserves and cannot settle, every other request is refused.
HEADROOM_BYTES = 32 * 1024
WARM = 8
BURST = 200
AFTER = 20
CLIENTS = 4
MODEL = "Llama-3.3-8B-Instruct"
PATHS = ("/v1/chat/completions", "/compat/v1/chat/completions")
REFUSAL_CODES = {"quota_backend_unavailable", "database_unavailable"}
RECORDS = UsageRecord._meta.db_table
QUOTA = TeamQuotaState._meta.db_table
RESERVATIONS = QuotaReservation._meta.db_table

# Run by a subprocess on the tmpfs database: the schema, the catalog, a team on a tier whose limits no
# request here reaches (its monthly one makes the period counter count tokens), a model-API key.
SETUP = """
import json
import django

django.setup()
from django.core.management import call_command

from accounts.selectors import team_for_user
from accounts.services import api_key_create
from tiers import services
from tiers.models import Subscription, Tier

call_command("migrate", interactive=False, verbosity=0)
services.tier_catalog_seed()
tier = Tier.objects.create(slug="disk-full", name="Disk full", is_paid=False, price_cents=0, monthly_tokens=10**12)
tier.allowed_models.set(Tier.objects.get(slug="free").allowed_models.all())
team = team_for_user(user=services.user_create(email="disk-full@example.com"))
Subscription.objects.filter(team=team).update(tier=tier)
_, secret = api_key_create(team=team, name="disk-full")
print(json.dumps({"team": team.pk, "secret": secret}))
"""
# The sweeper (usage.tasks.usage_reservations_sweep, every 60 s from beat) once the reservation timeout
# has passed for every reservation left.
SWEEP = """
import django

django.setup()
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from usage.quotas import get_quota_backend

later = timezone.now() + timedelta(seconds=settings.TIERLAB_RESERVATION_TIMEOUT_SECONDS + 1)
print(get_quota_backend().sweep(now=later))
"""

Answer = tuple[str, int | None, dict[str, str], bytes]  # request id, status (None: no answer), headers, body


def _environment(home: Path, database: Path) -> dict[str, str]:
    """The embedded default on ``database``, whatever the suite runs on (CI's second run sets
    DATABASE_URL, CACHE_URL and CELERY_BROKER_URL for PostgreSQL and Redis: none of them is passed)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "0",
        "DATABASE_URL": f"sqlite:///{database}",
        "TIERLAB_QUOTA_BACKEND": "database",
        "CACHE_URL": "locmemcache://",  # the model API does not use the shared cache
        "CELERY_BROKER_URL": "filesystem://",
        "CELERY_BROKER_DIR": str(home / "celery"),  # off the tmpfs: the fault is the database's
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }


def _run(script: str, env: dict[str, str]) -> str:
    """Run ``script`` with the project's Python in the project's folder; its last line of output."""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=180,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def _fill(folder: Path) -> Path:
    """Write a file in ``folder`` until its file system is full; returns it."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as file:
        for chunk in (256 * 1024, 4096, 512, 1):
            try:
                while True:
                    file.write(b"\0" * chunk)
            except OSError:
                continue
    return filler


def _send(port: int, secret: str, request_id: str, index: int) -> Answer:
    """POST a chat completion: streamed if ``index`` is odd, native or compatible by ``index``."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Request {index}: say something."}],
        "max_completion_tokens": 16 + index % 32,
        "stream": bool(index % 2),
    }
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json", "X-Request-Id": request_id}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", PATHS[index // 2 % 2], body=json.dumps(body), headers=headers)
        response = connection.getresponse()
        return request_id, response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    except (OSError, http.client.HTTPException):
        return request_id, None, {}, b""
    finally:
        connection.close()


def _burst(port: int, secret: str, prefix: str, count: int) -> list[Answer]:
    """``count`` requests from CLIENTS threads, ids ``<prefix>-<n>``."""
    answers: list[Answer] = []
    lock = threading.Lock()
    indexes = iter(range(count))

    def client() -> None:
        while True:
            with lock:
                index = next(indexes, None)
            if index is None:
                return
            answer = _send(port, secret, f"{prefix}-{index}", index)
            with lock:
                answers.append(answer)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == count, f"only {len(answers)} of {count} requests finished in time"
    return answers


def _whole(status: int | None, body: bytes) -> bool:
    """A 2xx with the whole answer: a JSON completion, or a stream that reached its closing events."""
    if status is None or not 200 <= status < 300:
        return False
    if body.startswith(b"data: "):
        return body.rstrip().endswith(b"data: [DONE]") or b'"event_type":"metrics"' in body
    return "error" not in json.loads(body)


def _stream_error(body: bytes) -> dict | None:
    """The error a stream ended with (``event: error`` and the JSON error shape), if it did."""
    last = body.rstrip().rsplit(b"\n\n", 1)[-1]
    if not last.startswith(b"event: error\ndata: "):
        return None
    return json.loads(last.split(b"data: ", 1)[1])


def _refusal_problems(answers: list[Answer]) -> list[str]:
    """What is wrong with the refusals: each must be a 503 in the JSON error shape with Retry-After."""
    problems = []
    for request_id, status, headers, body in answers:
        if status is None:
            problems.append(f"{request_id}: no HTTP answer")
        elif not 200 <= status < 300:
            try:
                error = json.loads(body)["error"]
            except (ValueError, KeyError, TypeError):
                problems.append(f"{request_id}: {status} {body[:200]!r}")
                continue
            if (
                status != 503
                or not headers.get("content-type", "").startswith("application/json")
                or set(error) != {"message", "type", "code", "param"}
                or error["code"] not in REFUSAL_CODES
                or not headers.get("retry-after", "").isdigit()
                or int(headers["retry-after"]) < 1
            ):
                problems.append(f"{request_id}: {status} Retry-After {headers.get('retry-after')} {error}")
    return problems


def _state(database: Path, team: int) -> dict[str, int]:
    """The team's counters, the records they count (day: requests, period: tokens) and the
    reservations left, read with SQL from the database file."""
    connection = sqlite3.connect(database)
    try:
        day_requests, period_tokens, day_start, period_start = connection.execute(
            f"SELECT day_requests, period_tokens, day_start, period_start FROM {QUOTA} WHERE team_id = ?",  # noqa: S608
            (team,),
        ).fetchone()
        records_today = connection.execute(
            f"SELECT count(*) FROM {RECORDS} WHERE team_id = ? AND created_at >= ?",  # noqa: S608
            (team, day_start),
        ).fetchone()[0]
        tokens_in_period = connection.execute(
            f"SELECT coalesce(sum(total_tokens), 0) FROM {RECORDS} WHERE team_id = ? AND created_at >= ?",  # noqa: S608
            (team, period_start),
        ).fetchone()[0]
        pending, pending_tokens = connection.execute(
            f"SELECT count(*), coalesce(sum(tokens), 0) FROM {RESERVATIONS} WHERE team_id = ?",  # noqa: S608
            (team,),
        ).fetchone()
    finally:
        connection.close()
    return {
        "day_requests": day_requests,
        "records_today": records_today,
        "period_tokens": period_tokens,
        "tokens_in_period": tokens_in_period,
        "pending": pending,
        "pending_tokens": pending_tokens,
    }


def _records(database: Path, team: int) -> list[str]:
    connection = sqlite3.connect(database)
    try:
        rows = connection.execute(f"SELECT request_id FROM {RECORDS} WHERE team_id = ?", (team,)).fetchall()  # noqa: S608
    finally:
        connection.close()
    return [request_id for (request_id,) in rows]


def test_database_backend_with_the_disk_nearly_full_records_every_answer_once(tmp_path: Path, report):
    started = time.monotonic()
    with tmpfs(tmp_path / "var", TMPFS_SIZE) as var:
        database = var / "db.sqlite3"
        env = _environment(tmp_path, database)
        account = json.loads(_run(SETUP, env))
        secret = account["secret"]

        with gunicorn(env, tmp_path / "web", ready_path="/healthz", ready_status=None) as web:
            warm = _burst(web.port, secret, "warm", WARM)
            filler = _fill(var)
            os.truncate(filler, filler.stat().st_size - HEADROOM_BYTES)
            space = os.statvfs(var)
            free = space.f_bavail * space.f_frsize
            full = _burst(web.port, secret, "full", BURST)
            filler.unlink()
            after = _burst(web.port, secret, "after", AFTER)
            log = web.log_tail(20)
        # gunicorn stopped: every request has ended, nothing is in flight.
        before_sweep = _state(database, account["team"])
        swept = int(_run(SWEEP, env))
        state = _state(database, account["team"])
        recorded = _records(database, account["team"])

    answers = warm + full + after
    answered = {request_id for request_id, status, _, body in answers if _whole(status, body)}
    cut = {
        request_id: _stream_error(body)
        for request_id, status, _, body in answers
        if status == 200 and not _whole(status, body)
    }
    statuses = Counter(status for _, status, _, _ in full)
    report(
        f"\ndatabase backend, disk nearly full ({free // 1024} KiB free on a {TMPFS_SIZE} tmpfs): burst of {BURST} "
        f"statuses {dict(statuses)}, streams cut by an error event (reserved, settle failed) {len(cut)}; "
        f"{AFTER} after freeing: {sum(_whole(s, b) for _, s, _, b in after)} answered\n"
        f"answered 2xx {len(answered)} / records {len(recorded)} (distinct {len(set(recorded))}) / counters: "
        f"requests today {state['day_requests']}, tokens this period {state['period_tokens']} (records' tokens "
        f"{state['tokens_in_period']}); before the sweep {before_sweep['day_requests']} requests / "
        f"{before_sweep['period_tokens']} tokens with {before_sweep['pending']} reservations pending, swept {swept}; "
        f"{time.monotonic() - started:.1f} s"
    )

    assert all(_whole(status, body) for _, status, _, body in warm), f"before the fill:\n{log}"
    assert free <= HEADROOM_BYTES + 8192, f"{free} bytes free after the fill: the disk is not nearly full"
    assert statuses[503] > 0, "no request was refused: the disk was not full"
    assert _refusal_problems(answers) == []
    assert all(_whole(status, body) for _, status, _, body in after), f"after freeing the disk:\n{log}"

    assert len(recorded) == len(set(recorded)), "a request has more than one usage record"
    assert answered - set(recorded) == set(), f"2xx without a record: {sorted(answered - set(recorded))}"
    assert set(recorded) - answered == set(), f"records without a 2xx: {sorted(set(recorded) - answered)}"
    # The fault: a stream whose reservation committed and whose settle failed. Its client is
    # told (an error event, not the closing events), and it is neither recorded nor counted.
    assert cut, "no stream reserved and then failed to settle: the headroom did not reproduce the fault"
    for request_id, error in cut.items():
        assert error is not None and set(error["error"]) == {"message", "type", "code", "param"}, (request_id, error)
        assert error["error"]["code"] == "quota_backend_unavailable", (request_id, error)
    # Before the sweep the counters are above the records by exactly the reservations left, and those
    # are the cut streams'; the sweeper gives them back, once.
    assert before_sweep["pending"] == len(cut) == swept
    assert before_sweep["day_requests"] == before_sweep["records_today"] + before_sweep["pending"]
    assert before_sweep["period_tokens"] == before_sweep["tokens_in_period"] + before_sweep["pending_tokens"]
    assert state["pending"] == 0
    assert state["day_requests"] == state["records_today"]
    assert state["period_tokens"] == state["tokens_in_period"]
