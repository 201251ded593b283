#!/usr/bin/env python3
"""Rollup throughput and the read side of insight (issue 5).

  1. creates the teams, users and keys through the project's services, then inserts --records usage
     records fast (executemany on SQLite, COPY on PostgreSQL; the column list comes from
     UsageRecord._meta, so a new column gets its default or fails loudly, never silently): one team
     with a year of hourly traffic (every hour of the last 365 days, two keys, two models), the rest
     spread over the last 30 days across the other teams;
  2. times ``usage.rollups.usage_rollup_fold`` over all of them (records folded per second), checks the
     rollups against a direct aggregation of the records: per granularity the totals, and per (team,
     hour) and (team, day) bucket the requests and tokens; and that a second fold adds nothing;
  3. times GET /dashboard/ (this period, and ?range=365d: the chart over a year) and
     GET /api/v1/usage?start=..&end=..&granularity=day (a year, JSON and CSV) for the user of the
     year-long team, through a logged-in django.test.Client, after a warm-up: p50 / p95 over
     --requests requests each; each must answer 200. Goal: dashboard p50 < 200 ms for a year of
     hourly data.

    .venv/bin/python bench/rollup.py --quick                   # 20,000 records, 5 requests: the CI check
    .venv/bin/python bench/rollup.py --records 100000          # SQLite (a temp file)
    .venv/bin/python bench/rollup.py                           # SQLite, 1,000,000 records
    .venv/bin/python bench/rollup.py --database-url postgres://tierlab:tierlab@127.0.0.1:55432/tierlab

With --database-url the bench creates a scratch database on that PostgreSQL server (the role needs
CREATEDB; bench/_pg.py) and drops it at the end. SQLite: a file in a temp directory, removed at the
end. Loopback only; bounded by --records. Exit status 0 when every check held (the goal is reported,
not enforced), 1 when a check failed (listed at the end).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._pg import is_postgres, scratch_database  # noqa: E402 - stdlib only until called

MODELS = ("Llama-3.3-8B-Instruct", "Llama-3.3-70B-Instruct")
OTHER_TEAMS = 19
CHUNK = 50_000
GOAL_DASHBOARD_P50_SECONDS = 0.2
YEAR_HOURS = 365 * 24


def _say(message: str = "") -> None:
    print(message, flush=True)


def _configure(args) -> tuple[str, callable]:
    """Point Django at a fresh database; returns (label, cleanup)."""
    directory = tempfile.mkdtemp(prefix="tierlab-rollup-bench-")
    os.environ["CELERY_BROKER_DIR"] = str(Path(directory) / "celery")
    if args.database_url:
        if not is_postgres(args.database_url):
            raise SystemExit("--database-url must be a PostgreSQL URL (the default is a temporary SQLite file)")
        url, drop = scratch_database(args.database_url, "rollup")
        os.environ["DATABASE_URL"] = url

        def cleanup() -> None:
            from django.db import connections

            connections.close_all()
            drop()
            shutil.rmtree(directory, ignore_errors=True)

        return f"PostgreSQL (scratch database {url.rsplit('/', 1)[-1]})", cleanup
    os.environ["DATABASE_URL"] = f"sqlite:///{directory}/bench.sqlite3"
    return f"SQLite ({directory}/bench.sqlite3)", lambda: shutil.rmtree(directory, ignore_errors=True)


def _records(*, total: int, year_team: int, keys: list[int], others: list[int], now: datetime, seed: int = 1):
    """Usage records as dicts of field attnames: a share of them spread evenly over every hour of the
    last year for ``year_team``, the rest over the last 30 days for the other teams."""
    rng = random.Random(seed)
    year_share = max(YEAR_HOURS, total // 3)
    start = now - timedelta(hours=YEAR_HOURS)
    for i in range(total):
        if i < year_share:
            team, key = year_team, rng.choice(keys)
            created = start + timedelta(hours=i % YEAR_HOURS, seconds=rng.randrange(3600))
        else:
            team, key = others[i % len(others)], None
            created = now - timedelta(seconds=rng.randrange(30 * 86400))
        prompt, completion = rng.randrange(5, 400), rng.randrange(1, 300)
        yield {
            "request_id": f"b{i}",
            "team_id": team,
            "api_key_id": key,
            "model": rng.choice(MODELS),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "created_at": created,
        }


def _row_tuples(rows: Iterator[dict], *, adapt_datetimes: bool) -> tuple[list[str], Iterator[tuple]]:
    """The UsageRecord table's columns (every concrete field but the id, from ``_meta``) and ``rows``
    as tuples in that order. A column the rows do not give takes its field's default (NULL for a
    nullable one); a required column without a default stops the bench here, by name."""
    from django.db import connection, models

    from usage.models import UsageRecord

    fields = [f for f in UsageRecord._meta.concrete_fields if not f.primary_key]
    first = next(rows)
    defaults = {}
    for f in fields:
        if f.attname in first:
            continue
        if f.has_default():
            defaults[f.attname] = f.get_db_prep_save(f.get_default(), connection)
        elif f.null:
            defaults[f.attname] = None
        else:
            raise SystemExit(
                f"UsageRecord.{f.name} is required and has no default: bench/rollup.py must give it a value"
            )
    adapt = connection.ops.adapt_datetimefield_value
    converters = [
        (f.attname, adapt_datetimes and isinstance(f, models.DateTimeField), defaults.get(f.attname)) for f in fields
    ]

    def tuples() -> Iterator[tuple]:
        for item in itertools.chain([first], rows):
            yield tuple(
                (adapt(item[name]) if is_datetime else item[name]) if name in item else default
                for name, is_datetime, default in converters
            )

    return [f.column for f in fields], tuples()


def _insert(rows: Iterator[dict], *, total: int) -> float:
    from django.db import connection, transaction

    from usage.models import UsageRecord

    postgres = connection.vendor == "postgresql"
    columns, tuples = _row_tuples(rows, adapt_datetimes=not postgres)
    quoted = ", ".join(connection.ops.quote_name(c) for c in columns)
    table = connection.ops.quote_name(UsageRecord._meta.db_table)
    began = time.perf_counter()
    if postgres:
        with (
            transaction.atomic(),
            connection.cursor() as cursor,
            cursor.cursor.copy(f"COPY {table} ({quoted}) FROM STDIN") as copy,
        ):
            for row in tuples:
                copy.write_row(row)
    else:
        batch = []
        sql = f"INSERT INTO {table} ({quoted}) VALUES ({', '.join('?' * len(columns))})"  # noqa: S608 - ours
        connection.ensure_connection()
        raw = connection.connection
        for row in tuples:
            batch.append(row)
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


def _buckets_differ(granularity: str) -> list[str]:
    """(team, bucket) pairs whose rollups differ from a direct GROUP BY of the records (at most 5 shown)."""
    from django.db.models import Count, Sum
    from django.db.models.functions import TruncDay, TruncHour

    from usage.models import UsageRecord, UsageRollup

    trunc = (TruncHour if granularity == "hour" else TruncDay)("created_at", tzinfo=UTC)
    direct = {
        (row["team_id"], row["bucket"]): (row["n"], row["t"])
        for row in UsageRecord.objects.annotate(bucket=trunc)
        .values("team_id", "bucket")
        .annotate(n=Count("id"), t=Sum("total_tokens"))
    }
    rolled = {
        (row["team_id"], row["bucket_start"]): (row["n"], row["t"])
        for row in UsageRollup.objects.filter(granularity=granularity)
        .values("team_id", "bucket_start")
        .annotate(n=Sum("requests"), t=Sum("total_tokens"))
    }
    keys = sorted(set(direct) | set(rolled), key=lambda k: (k[0], k[1]))
    wrong = [k for k in keys if direct.get(k) != rolled.get(k)]
    shown = [f"team {k[0]} {k[1]:%Y-%m-%d %H:00}: records {direct.get(k)}, rollups {rolled.get(k)}" for k in wrong[:5]]
    return shown + ([f"... {len(wrong) - 5} more"] if len(wrong) > 5 else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--database-url", help="a PostgreSQL server (postgres://...); default: SQLite in a temp dir")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per page (after 3 warm-up ones)")
    parser.add_argument("--batch-size", type=int, default=100_000, help="the fold's id range per transaction")
    parser.add_argument("--quick", action="store_true", help="CI check: 20,000 records, 5 timed requests per page")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.requests = 20_000, 5
    if args.records < YEAR_HOURS:
        parser.error(f"--records must be at least {YEAR_HOURS:,} (a year of hours for the year-long team)")

    # Always the project's own settings (never a test or baseline module inherited from the caller).
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ["DEBUG"] = "0"  # no query log growing over a million rows
    os.environ["CACHE_URL"] = "locmemcache://"
    os.environ["TIERLAB_PRODUCTION"] = "0"
    os.environ.pop("CELERY_BROKER_URL", None)  # its own broker folder (nothing is queued; no shared broker)
    label, cleanup = _configure(args)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # cleanup runs on TERM too
    try:
        return _run(args, label)
    finally:
        cleanup()


def _run(args, label: str) -> int:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db.models import Count, Sum
    from django.test import Client

    from accounts.selectors import team_for_user
    from accounts.services import api_key_create
    from tiers.services import tier_catalog_seed, user_create
    from usage.models import UsageRecord, UsageRollup
    from usage.rollups import usage_rollup_fold

    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            failures.append(what)

    _say(f"rollup bench on {label}: {args.records:,} records")
    began = time.perf_counter()
    call_command("migrate", verbosity=0)
    tier_catalog_seed()
    _say(f"  migrated and seeded in {time.perf_counter() - began:.1f} s")
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    year_user = user_create(email="year@example.com", tier_slug="free")
    year_team = team_for_user(user=year_user)
    keys = [api_key_create(team=year_team, name=f"key {n}")[0].pk for n in range(2)]
    others = [team_for_user(user=user_create(email=f"t{n}@example.com")).pk for n in range(OTHER_TEAMS)]
    rows = _records(total=args.records, year_team=year_team.pk, keys=keys, others=others, now=now)
    _insert(rows, total=args.records)

    began, cpu_began = time.perf_counter(), time.process_time()
    folded = usage_rollup_fold(batch_size=args.batch_size)
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    _say(f"  FOLD: {folded:,} records in {elapsed:.2f} s = {folded / elapsed:,.0f} records/s; "
         f"this process's CPU {1e6 * cpu / max(1, folded):.2f} µs per record (not the database server's)")  # fmt: skip
    began = time.perf_counter()
    again = usage_rollup_fold(batch_size=args.batch_size)
    _say(f"  second fold: {again} records in {(time.perf_counter() - began) * 1000:.1f} ms")
    check(folded == args.records, f"the fold folded {folded:,} records, not {args.records:,}")
    check(again == 0, f"a second fold folded {again:,} records again")
    direct = UsageRecord.objects.aggregate(n=Count("id"), t=Sum("total_tokens"))
    for granularity in ("hour", "day"):
        rollups = UsageRollup.objects.filter(granularity=granularity)
        sums = rollups.aggregate(r=Sum("requests"), t=Sum("total_tokens"))
        check(
            sums["r"] == args.records == direct["n"] and sums["t"] == direct["t"],
            f"{granularity} rollups hold {sums['r']} requests / {sums['t']} tokens; the records: "
            f"{args.records} / {direct['t']}",
        )
        began = time.perf_counter()
        wrong = _buckets_differ(granularity)
        check(not wrong, f"{granularity} rollups differ from the records in: {'; '.join(wrong)}")
        _say(
            f"  {granularity} rollups: {rollups.count():,} rows, {sums['r']:,} requests, {sums['t']:,} tokens; "
            f"per (team, {granularity}) equal to a direct GROUP BY of the records: {'yes' if not wrong else 'NO'} "
            f"(compared in {time.perf_counter() - began:.1f} s)"
        )
    year_rows = UsageRollup.objects.filter(granularity="hour", team=year_team).count()
    _say(f"  the year-long team: {year_rows:,} hour rollup rows")

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
        check(status == 200, f"{name} answered {status}")
        goal = ""
        if url == "/dashboard/?range=365d":
            p50 = statistics.median(samples)
            goal = f"; goal p50 < {GOAL_DASHBOARD_P50_SECONDS * 1000:.0f} ms: "
            goal += "met" if p50 < GOAL_DASHBOARD_P50_SECONDS else "MISSED"
        note = "" if status == 200 else "  <- NOT 200: the time is not the page's"
        _say(f"  {name}: {_percentiles(samples)}; status {status}, {size:,} bytes{goal}{note}")
    if failures:
        _say("  CHECKS FAILED:")
        for failure in failures:
            _say(f"    - {failure}")
        return 1
    _say("  checks: OK (fold == records, second fold 0, rollups == a direct count per bucket, pages 200)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
