#!/usr/bin/env python3
"""Rollup throughput and the read side of insight (issue 5).

  1. inserts --records usage records fast (executemany on SQLite, COPY on PostgreSQL) for several
     teams: one team with a year of hourly traffic (every hour of the last 365 days, two keys, two
     models), the rest spread over the last 30 days across the other teams;
  2. times ``usage.rollups.usage_rollup_fold`` over all of them (records folded per second), checks the
     rollups against a direct aggregation of the records (total requests and tokens, per granularity)
     and that a second fold adds nothing;
  3. times GET /dashboard/ (this period, and ?range=365d: the chart over a year) and
     GET /api/v1/usage?start=..&end=..&granularity=day (a year, JSON and CSV) for the user of the
     year-long team, through a logged-in django.test.Client, after a warm-up: p50 / p95 over
     --requests requests each. Goal: dashboard p50 < 200 ms for a year of hourly data.

    .venv/bin/python bench/rollup.py --records 100000          # SQLite (a temp file), quick check
    .venv/bin/python bench/rollup.py                           # SQLite, 1,000,000 records
    .venv/bin/python bench/rollup.py --database-url postgres://tierlab:tierlab@127.0.0.1:55432/tierlab_h1

On PostgreSQL the bench creates its own database, ``<name in the URL>_rollup_bench``, on that server
(the role needs CREATEDB; it connects to the server's "postgres" database for that) and drops it at
the end. SQLite: a file in a temp directory, removed at the end. Loopback only; bounded by --records.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ("Llama-3.3-8B-Instruct", "Llama-3.3-70B-Instruct")
OTHER_TEAMS = 19
CHUNK = 50_000


def _say(message: str = "") -> None:
    print(message, flush=True)


def _pg_admin(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def _configure(args) -> tuple[str, callable]:
    """Point Django at a fresh database; returns (label, cleanup)."""
    if args.database_url:
        parts = urllib.parse.urlsplit(args.database_url)
        name = parts.path.lstrip("/") + "_rollup_bench"
        bench_url = urllib.parse.urlunsplit(parts._replace(path="/" + name))
        # Created and dropped from the server's maintenance database: the one in the URL need not exist.
        admin_url = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
        _pg_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}"')
        _pg_admin(admin_url, f'CREATE DATABASE "{name}"')
        os.environ["DATABASE_URL"] = bench_url

        def cleanup() -> None:
            from django.db import connections

            connections.close_all()
            _pg_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}"')

        return f"PostgreSQL ({parts.hostname}:{parts.port}/{name})", cleanup
    directory = tempfile.mkdtemp(prefix="tierlab-rollup-bench-")
    os.environ["DATABASE_URL"] = f"sqlite:///{directory}/bench.sqlite3"
    return f"SQLite ({directory}/bench.sqlite3)", lambda: shutil.rmtree(directory, ignore_errors=True)


def _records(*, total: int, year_team: int, keys: list[int], others: list[int], now: datetime, seed: int = 1):
    """(request_id, team_id, api_key_id, model, prompt, completion, total, partner_id, created_at) rows:
    a share of them spread evenly over every hour of the last year for ``year_team``, the rest over
    the last 30 days for the other teams."""
    rng = random.Random(seed)
    hours = 365 * 24
    year_share = max(hours, total // 3)
    start = now - timedelta(hours=hours)
    for i in range(total):
        if i < year_share:
            team, key = year_team, rng.choice(keys)
            created = start + timedelta(hours=i % hours, seconds=rng.randrange(3600))
        else:
            team, key = others[i % len(others)], None
            created = now - timedelta(seconds=rng.randrange(30 * 86400))
        prompt, completion = rng.randrange(5, 400), rng.randrange(1, 300)
        yield (f"b{i}", team, key, rng.choice(MODELS), prompt, completion, prompt + completion, None, created)


def _insert(rows, *, total: int) -> float:
    from django.db import connection, transaction

    from usage.models import UsageRecord

    columns = (
        "request_id, team_id, api_key_id, model, prompt_tokens, completion_tokens, total_tokens, partner_id, created_at"
    )
    table = UsageRecord._meta.db_table
    began = time.perf_counter()
    if connection.vendor == "postgresql":
        with (
            transaction.atomic(),
            connection.cursor() as cursor,
            cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
    else:
        adapt = connection.ops.adapt_datetimefield_value
        batch = []
        sql = f"INSERT INTO {table} ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
        connection.ensure_connection()
        raw = connection.connection
        for row in rows:
            batch.append((*row[:8], adapt(row[8])))
            if len(batch) >= CHUNK:
                with transaction.atomic():
                    raw.executemany(sql, batch)
                batch.clear()
        if batch:
            with transaction.atomic():
                raw.executemany(sql, batch)
    elapsed = time.perf_counter() - began
    _say(f"  inserted {total:,} records in {elapsed:.1f} s ({total / elapsed:,.0f}/s)")
    return elapsed


def _percentiles(samples: list[float]) -> str:
    samples = sorted(samples)
    p95 = samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]
    return f"p50 {statistics.median(samples) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms (n={len(samples)})"


def _time_get(client, url: str, *, requests: int, warmup: int = 3) -> tuple[list[float], int, int]:
    for _ in range(warmup):
        response = client.get(url)
    samples = []
    for _ in range(requests):
        began = time.perf_counter()
        response = client.get(url)
        samples.append(time.perf_counter() - began)
    return samples, response.status_code, len(response.content)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--database-url", help="a PostgreSQL server (postgres://...); default: SQLite in a temp dir")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per page (after 3 warm-up ones)")
    parser.add_argument("--batch-size", type=int, default=100_000, help="the fold's id range per transaction")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["DEBUG"] = "0"  # no query log growing over a million rows
    os.environ["CACHE_URL"] = "locmemcache://"
    os.environ.setdefault("CELERY_BROKER_DIR", tempfile.mkdtemp(prefix="tierlab-rollup-bench-broker-"))
    label, cleanup = _configure(args)
    try:
        return _run(args, label)
    finally:
        cleanup()


def _run(args, label: str) -> int:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db.models import Sum
    from django.test import Client

    from accounts import services
    from accounts.selectors import team_for_user
    from tiers.services import tier_catalog_seed
    from usage.models import UsageRecord, UsageRollup
    from usage.rollups import usage_rollup_fold

    _say(f"rollup bench on {label}: {args.records:,} records")
    began = time.perf_counter()
    call_command("migrate", verbosity=0)
    tier_catalog_seed()
    _say(f"  migrated and seeded in {time.perf_counter() - began:.1f} s")
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    year_user = services.user_create(email="year@example.com", tier_slug="free")
    year_team = team_for_user(user=year_user)
    keys = [services.api_key_create(team=year_team, name=f"key {n}")[0].pk for n in range(2)]
    others = [team_for_user(user=services.user_create(email=f"t{n}@example.com")).pk for n in range(OTHER_TEAMS)]
    rows = _records(total=args.records, year_team=year_team.pk, keys=keys, others=others, now=now)
    _insert(rows, total=args.records)

    began = time.perf_counter()
    folded = usage_rollup_fold(batch_size=args.batch_size)
    elapsed = time.perf_counter() - began
    _say(f"  FOLD: {folded:,} records in {elapsed:.2f} s = {folded / elapsed:,.0f} records/s")
    began = time.perf_counter()
    again = usage_rollup_fold(batch_size=args.batch_size)
    _say(f"  second fold: {again} records in {(time.perf_counter() - began) * 1000:.1f} ms")
    direct = UsageRecord.objects.aggregate(t=Sum("total_tokens"))["t"]
    ok = folded == args.records and again == 0
    for granularity in ("hour", "day"):
        rollups = UsageRollup.objects.filter(granularity=granularity)
        sums = rollups.aggregate(r=Sum("requests"), t=Sum("total_tokens"))
        ok &= sums["r"] == args.records and sums["t"] == direct
        _say(f"  {granularity} rollups: {rollups.count():,} rows, {sums['r']:,} requests, {sums['t']:,} tokens")
    year_rows = UsageRollup.objects.filter(granularity="hour", team=year_team).count()
    _say(f"  the year-long team: {year_rows:,} hour rollup rows; rollups equal the records: {ok}")

    # The dashboard is another engineer's page, built on these selectors: a failure there is reported
    # (its status), not raised, so the API figures still come out.
    client = Client(raise_request_exception=False)
    client.force_login(year_user)
    start = (now - timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for name, url in [
        ("GET /dashboard/ (this period)", "/dashboard/"),
        ("GET /dashboard/?range=365d (a year)", "/dashboard/?range=365d"),
        ("GET /api/v1/usage (a year, by day)", f"/api/v1/usage?start={start}&end={end}&granularity=day"),
        (
            "GET /api/v1/usage (a year, by day, csv)",
            f"/api/v1/usage?start={start}&end={end}&granularity=day&format=csv",
        ),
    ]:
        samples, status, size = _time_get(client, url, requests=args.requests)
        ok &= status == 200 or url.startswith("/dashboard/")
        note = "" if status == 200 else "  <- NOT 200: the page failed, the time is not the page's"
        _say(f"  {name}: {_percentiles(samples)}; status {status}, {size:,} bytes{note}")
    _say("  checks: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
