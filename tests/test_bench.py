"""The benchmark scripts keep working: each runs in its ``--quick`` mode, as a subprocess, and must
pass its own correctness checks (exit 0). Nothing else runs them, so without this they rot (bench/).

What each checks is in its docstring; in short: api_overhead — records == admitted per run, no SQL
write on the Redis path, exactly the quota admitted when clients race for it, the baseline records
nothing (and its profile and what-if helpers run); billing_close — one invoice per due subscription,
the expected lines and cents, every renewal charged once through localstripe, a second pass adds
nothing; partner_ingest — every event accepted once, a replayed batch adds 0 rows; rollup — rollups
equal a direct count per bucket, a second fold adds nothing, the usage pages answer 200; simulate — a
small scenario's figures add up, and split over two Celery workers it gives the single run's summary.json;
serving — every configuration (gunicorn sync, gthread, granian, the Procfile's own web line) answers
200 and records what it answered. api_overhead runs with ``--teams 20``: its keys spread over teams;
three times: under the Procfile's server (its default) and under gunicorn's sync workers with warm
caches (its default: every worker has served every key of the pool first), and under the Procfile's
server with ``--caches cold`` (each run its own fresh keys).

On the embedded default the scripts use their own temporary SQLite files. When DATABASE_URL names a
PostgreSQL server (CI's second run), it is passed as each script's ``--database-url``: the scripts make
scratch databases there and drop them (the role needs CREATEDB, as CI's has). Redis: api_overhead
starts its own redis-server on a free loopback port.

Those runs are marked ``bench`` (a few minutes in all): ``-m "not bench"`` leaves them out locally;
``make test`` and CI run them. The fairness of api_overhead's baseline (bench/baseline_urls.py: the
same response body as the metered endpoint, without key, quota or record) is checked here directly,
unmarked: it is quick.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.test import Client

from accounts.selectors import api_key_cache_clear, team_for_user
from accounts.services import api_key_create
from tiers.selectors import entitlements_cache_clear
from tiers.services import user_create
from usage.models import UsageRecord

ROOT = Path(__file__).resolve().parent.parent
# Generous: a --quick run takes 10-60 s on a quiet 2-core machine; CI's may be slower and busier.
TIMEOUT_SECONDS = 600


def _postgres_url() -> str | None:
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith(("postgres://", "postgresql://", "pgsql://")) else None


def _args(script: str, postgres: str | None) -> list[str]:
    if script == "billing_close":
        # One database per CI run: SQLite in the first, PostgreSQL in the second.
        return ["--database-url", postgres, "--skip-sqlite"] if postgres else ["--skip-postgres"]
    extra = ["--teams", "20"] if script == "api_overhead" else []  # the many-teams path (issue 17)
    return [*extra, *(["--database-url", postgres] if postgres else [])]


SCRIPTS = [
    "api_overhead",
    "api_overhead-gunicorn-sync",
    "api_overhead-cold",
    "billing_close",
    "partner_ingest",
    "rollup",
    "serving",
    "simulate",
]
# A variant runs its script with more arguments: api_overhead serves the Procfile's web line by default,
# and gunicorn's sync workers (the earlier setting, kept for comparison) with --server gunicorn-sync;
# its caches are warm by default (issue 17's steady state), cold with --caches cold.
VARIANTS = {
    "api_overhead-gunicorn-sync": ("api_overhead", ["--server", "gunicorn-sync"]),
    "api_overhead-cold": ("api_overhead", ["--caches", "cold"]),
}
NEEDS = {"api_overhead": ["redis-server"], "serving": ["redis-server", "wrk"]}


@pytest.mark.bench
@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_quick_run_passes_its_checks(script):
    script, variant = VARIANTS.get(script, (script, []))
    missing = [tool for tool in NEEDS.get(script, []) if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"bench/{script}.py needs {', '.join(missing)} (Debian package; CI installs it)")
    command = [sys.executable, f"bench/{script}.py", "--quick", *variant, *_args(script, _postgres_url())]
    started = time.monotonic()
    # The script's own session: on a timeout it gets SIGTERM first, on which every bench script stops
    # the servers it started (they run in sessions of their own) and drops its scratch databases.
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        pytest.fail(
            f"{' '.join(command)} took more than {TIMEOUT_SECONDS} s; its output:\n{stdout[-6000:]}\n{stderr[-3000:]}"
        )
    took = time.monotonic() - started
    assert process.returncode == 0, (
        f"{' '.join(command)} exited {process.returncode} after {took:.0f} s.\n"
        f"--- stdout (end)\n{stdout[-8000:]}\n--- stderr (end)\n{stderr[-4000:]}"
    )


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/compat/v1/chat/completions"])
def test_the_baseline_answers_the_metered_body_without_key_quota_or_record(catalog, settings, path):
    api_key_cache_clear()
    entitlements_cache_clear()
    team = team_for_user(user=user_create(email="bench@example.com"))
    _, secret = api_key_create(team=team, name="bench")
    body = {
        "model": "Llama-3.3-8B-Instruct",
        "messages": [{"role": "user", "content": "How does a token bucket work?"}],
        "max_completion_tokens": 64,
    }

    def post(**headers):
        return Client().post(path, body, content_type="application/json", HTTP_X_REQUEST_ID="same-id", **headers)

    metered = post(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert metered.status_code == 200
    assert UsageRecord.objects.count() == 1
    settings.ROOT_URLCONF = "bench.baseline_urls"
    baseline = post()  # no key at all
    assert baseline.status_code == 200
    assert UsageRecord.objects.count() == 1  # nothing recorded
    metered_body, baseline_body = metered.json(), baseline.json()
    # The compat shape carries the second it was created in; everything else is the same, byte for byte.
    assert abs(metered_body.pop("created", 0) - baseline_body.pop("created", 0)) <= 1
    assert baseline_body == metered_body
    if b'"created"' not in metered.content:
        assert baseline.content == metered.content
    assert baseline["x-request-id"] == metered["x-request-id"] == "same-id"
    assert not [h for h in baseline.headers if h.lower().startswith("x-ratelimit")]
