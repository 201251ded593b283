#!/usr/bin/env python3
"""How fast partners can report usage: POST /api/v1/partner/usage-events with batches of 1,000 events.

Serves the app under gunicorn (sync workers) on loopback and posts batches of 1,000 distinct events
from a few client threads (keep-alive connections) for a bounded time; prints the sustained accepted
events per second. Then, in the same run and on the same database, a plain insert of the same
number of rows into the same table, three ways: Django's ``bulk_create``, the cursor's
``executemany``, and one multi-row ``INSERT ... VALUES (...), (...)`` statement per 1,000 rows (one
transaction per 1,000 rows, only the INSERTs timed: no HTTP, no JSON, no validation, no duplicate
check, one connection), and the ratio of the API's rate to the fastest of the three. The raw INSERTs
take their column list from PartnerUsageEvent._meta (a column the bench does not know gets its
default, or stops the run by name). The plain inserts run on one connection while the API has its
workers: on PostgreSQL that parallelism is why the API can be faster; on SQLite, which has one writer
at a time, the in-process inserts are the hard baseline.

Checks (a failed one exits 1): every event sent is accepted (no rejects, no duplicates); a replay of
one whole batch already sent answers 0 accepted, 1,000 duplicates and adds zero rows; the rows stored
equal the events the server said it accepted.

Goals (the issue): >= 20,000 events/s on PostgreSQL, and >= 50% of the plain bulk-insert rate.

    .venv/bin/python bench/partner_ingest.py                      # embedded default: a fresh SQLite file
    .venv/bin/python bench/partner_ingest.py --quick              # 2 s of load: the CI check
    .venv/bin/python bench/partner_ingest.py --database-url postgres://u:p@127.0.0.1:5432/postgres
    .venv/bin/python bench/partner_ingest.py --seconds 5 --clients 3 --workers 2

Self-contained and self-stopping: a temporary directory (SQLite file, broker folder, logs), one
gunicorn on a free 127.0.0.1 port, killed on exit; every step has a timeout. With --database-url it
creates a scratch database on that PostgreSQL server (the role needs CREATEDB; bench/_pg.py) and drops
it at the end (--keep keeps it, and the temporary directory). Exit status 0 when it ran and its
checks held (goals met or not; --fail-on-miss makes a missed goal exit 1), 1 on a failed check or
failure.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._pg import is_postgres, scratch_database  # noqa: E402 - stdlib only until called

PYTHON = Path(sys.executable)  # the project's virtualenv: gunicorn and Django come from it
ENDPOINT = "/api/v1/partner/usage-events"
BATCH = 1_000
GOAL_EVENTS_PER_SECOND_PG = 20_000
GOAL_RATIO = 0.50

# One event, as a partner would send it; the event id is the only part that varies.
_EVENT = (
    '{"event_id":"%s","customer":"cust-%d","model":"Llama-3.3-70B-Instruct","prompt_tokens":812,'
    '"completion_tokens":164,"amount_cents":%d,"currency":"usd","time":"%s"}'
)


_SLOT = b"#########"  # where the batch number goes in every event id of the template


def batch_template(prefix: str, when: str) -> bytes:
    """A batch of 1,000 events whose ids differ by index and carry a slot for the batch number."""
    slot = _SLOT.decode()
    events = ",".join(_EVENT % (f"{prefix}-{slot}-{i}", i % 997, 1 + i % 50, when) for i in range(BATCH))
    return f'{{"events":[{events}]}}'.encode()


def batch_body(template: bytes, number: int) -> bytes:
    """Batch ``number``: the template with its number in every event id. One bytes.replace (tens of
    microseconds) rather than formatting 1,000 events: the load generator shares the two cores with the
    server and must take as little of them as it can."""
    return template.replace(_SLOT, b"%09d" % number)


# --- children ----------------------------------------------------------------------------------------------
_children: list[subprocess.Popen] = []


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # gunicorn's workers, if any are left
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    if proc in _children:
        _children.remove(proc)


def _stop_all() -> None:
    for proc in list(_children):
        _stop(proc)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _say(message: str = "") -> None:
    print(message, flush=True)


def _django_side(command: str, env: dict, spec: dict, *, timeout: float = 600) -> dict:
    """Run ``command`` of this file's Django side in a subprocess; returns the JSON it prints last."""
    proc = subprocess.Popen(
        [str(PYTHON), str(Path(__file__).resolve()), "--django-side", command, "--spec", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _children.append(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise RuntimeError(f"{command} took more than {timeout} s") from None
    finally:
        if proc in _children:
            _children.remove(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{command} failed ({proc.returncode}):\n{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _post(conn: http.client.HTTPConnection, secret: str, body: bytes) -> tuple[int, dict]:
    conn.request(
        "POST", ENDPOINT, body=body, headers={"Content-Type": "application/json", "Authorization": f"Bearer {secret}"}
    )
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def start_gunicorn(env: dict, *, workers: int, secret: str, log: Path) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    cmd = [
        str(PYTHON), "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers), "--worker-class", "sync", "--timeout", "60", "--graceful-timeout", "10",
        "--log-level", "warning", "--error-logfile", str(log),
    ]  # fmt: skip
    with open(log.with_suffix(".out"), "ab") as output:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    _children.append(proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited ({proc.returncode}): see {log}")
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            status, body = _post(conn, secret, b'{"events":[]}')
            conn.close()
            if status != 200:
                raise RuntimeError(f"gunicorn answered {status} {body} to the probe: see {log}")
            return proc, port
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn not ready within 60 s: see {log}")


def _api_ingest(args: argparse.Namespace, env: dict, tmp: Path, run_id: str) -> dict:
    """Set up, serve, load, replay; the server is stopped before this returns."""
    setup = _django_side("setup", env, {"run_id": run_id})
    secret, when = setup["secret"], setup["event_time"]
    proc, port = start_gunicorn(env, workers=args.workers, secret=secret, log=tmp / "gunicorn.log")
    try:
        # Warm-up: every worker connects, loads the key, compiles the statement's plan.
        Load(port, secret, batch_template(f"{run_id}-warm", when)).run(clients=args.clients, seconds=args.warmup)
        template = batch_template(run_id, when)
        load = Load(port, secret, template)
        cpu_before = _tree_cpu_seconds(proc.pid)
        elapsed = load.run(clients=args.clients, seconds=args.seconds)
        cpu_seconds = _tree_cpu_seconds(proc.pid) - cpu_before
        if load.errors:
            raise RuntimeError(f"the load failed: {load.errors[:3]}")
        before = _django_side("count", env, {"run_id": run_id})["rows"]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        replay_status, replay = _post(conn, secret, batch_body(template, 0))
        conn.close()
        after = _django_side("count", env, {"run_id": run_id})["rows"]
    finally:
        _stop(proc)
    return {
        "load": load,
        "elapsed": elapsed,
        "before": before,
        "after": after,
        "replay_status": replay_status,
        "replay": replay,
        "event_time": when,
        "cpu_seconds": cpu_seconds,
    }


def _tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its descendants (a server's workers), from /proc."""
    ticks = 0
    pids, seen = [pid], 0
    while seen < len(pids):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in Path(f"/proc/{pids[seen]}/task/{pids[seen]}/children").read_text().split()]
        seen += 1
    for one in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class Load:
    """Client threads, each on its own keep-alive connection, posting the next unsent batch until the
    time is up. Counts what the server said it accepted."""

    def __init__(self, port: int, secret: str, template: bytes) -> None:
        self.port, self.secret, self.template = port, secret, template
        self._next = 0
        self._lock = threading.Lock()
        self.accepted = 0
        self.duplicates = 0
        self.rejected = 0
        self.batches = 0
        self.errors: list[str] = []

    def _take(self) -> int:
        with self._lock:
            number = self._next
            self._next += 1
            return number

    def client(self, deadline: float) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            while time.monotonic() < deadline:
                status, body = _post(conn, self.secret, batch_body(self.template, self._take()))
                if status != 200:
                    self.errors.append(f"{status} {body}")
                    return
                with self._lock:
                    self.accepted += body["accepted"]
                    self.duplicates += body["duplicates"]
                    self.rejected += body["rejected"]
                    self.batches += 1
        except Exception as exc:  # reported, and fails the run's checks
            self.errors.append(repr(exc))
        finally:
            conn.close()

    def run(self, *, clients: int, seconds: float) -> float:
        started = time.monotonic()
        deadline = started + seconds
        threads = [threading.Thread(target=self.client, args=(deadline,), daemon=True) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 120)
        return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url", default="", help="a PostgreSQL server for a scratch database (role with CREATEDB)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the load runs (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load first (default 1)")
    parser.add_argument("--clients", type=int, default=3, help="client threads / connections (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers (default 2)")
    parser.add_argument(
        "--bulk-rows", type=int, default=0, help="rows per plain-insert way (default: as many as the API accepted)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI check: 2 s of load, 0.5 s warm-up, at most 10,000 rows per plain way"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and the scratch database")
    parser.add_argument("--fail-on-miss", action="store_true", help="exit 1 if a goal is missed, too")
    parser.add_argument("--django-side", default="", help=argparse.SUPPRESS)
    parser.add_argument("--spec", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.django_side:
        return django_side(args.django_side, json.loads(args.spec))
    if args.quick:
        args.seconds, args.warmup, args.bulk_rows = 2.0, 0.5, args.bulk_rows or 10_000
    if args.database_url and not is_postgres(args.database_url):
        parser.error("--database-url must be a PostgreSQL URL (the default is a temporary SQLite file)")

    atexit.register(_stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="tierlab-partner-bench-"))
    drop = None
    try:
        if args.database_url:
            database_url, drop = scratch_database(args.database_url, "partner_ingest")
        else:
            database_url = f"sqlite:///{tmp / 'bench.sqlite3'}"
        vendor = "postgresql" if is_postgres(database_url) else "sqlite"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TIERLAB_", "CELERY_", "DATABASE_", "BENCH_"))}
        env.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            DEBUG="0",
            LOG_LEVEL="WARNING",
            DATABASE_URL=database_url,
            CELERY_BROKER_DIR=str(tmp / "celery"),
            CACHE_URL="locmemcache://",
            TIERLAB_PRODUCTION="0",
            PYTHONUNBUFFERED="1",
        )
        run_id = f"bench-{int(time.time())}-{os.getpid()}"
        _say(f"partner ingest benchmark: {vendor}, gunicorn {args.workers} sync workers, {args.clients} clients, ")
        _say(f"  batches of {BATCH} events, {args.seconds:g} s of load, {os.cpu_count()} CPUs")
        api = _api_ingest(args, env, tmp, run_id)
        load = api["load"]
        bulk_rows = min(load.accepted, args.bulk_rows) if args.bulk_rows else load.accepted
        bulk = _django_side(
            "bulk", env,
            {"run_id": run_id, "rows": bulk_rows, "event_time": api["event_time"], "connections": args.workers},
            timeout=900,
        )  # fmt: skip
    except RuntimeError as error:
        _say(f"benchmark failed: {error}\nlogs in {tmp}")
        args.keep = True
        return 1
    finally:
        _stop_all()
        if drop is not None and not args.keep:
            drop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    elapsed, before, after, replay, replay_status = (
        api["elapsed"], api["before"], api["after"], api["replay"], api["replay_status"]
    )  # fmt: skip
    api_rate = load.accepted / elapsed
    # The ratio is taken against the fastest of the plain inserts: the stricter comparison.
    best = max(bulk.values(), key=lambda timing: timing["rows_per_second"])
    ratio = api_rate / best["rows_per_second"] if best["rows_per_second"] else 0.0
    checks = {
        "events were sent": load.batches > 0,
        "every event accepted (no rejects, no duplicates)": load.rejected == 0 and load.duplicates == 0,
        "replay: 200, 0 accepted, 1000 duplicates": replay_status == 200
        and (replay.get("accepted"), replay.get("duplicates")) == (0, BATCH),
        "replay: 0 rows added": after == before,
        "rows stored == events accepted": before == load.accepted,
        "plain inserts stored every row": all(timing["stored"] == timing["rows"] for timing in bulk.values()),
    }
    _say()
    _say(f"API ingest:        {load.accepted:,} events accepted in {elapsed:.2f} s ({load.batches} batches)")
    _say(f"                   {api_rate:,.0f} events/s accepted")
    _say(f"                   {api['cpu_seconds'] / load.accepted * 1e6 if load.accepted else 0:.1f} µs of gunicorn "
         f"workers' CPU per event ({args.workers} workers = {args.workers} database connections)")  # fmt: skip
    for way, timing in bulk.items():
        _say(
            f"plain {way + ':':17s}{timing['rows']:,} rows in {timing['seconds']:.2f} s (1,000-row transactions), "
            f"{timing['rows_per_second']:,.0f} rows/s "
            f"(API / this: {api_rate / max(timing['rows_per_second'], 1e-9):.2f}), "
            f"{timing['cpu_us_per_row']:.1f} µs of client CPU per row"
        )
    _say(f"ratio API / fastest plain insert ({next(w for w, t in bulk.items() if t is best)}): {ratio:.2f}  "
         f"(goal >= {GOAL_RATIO:.2f})")  # fmt: skip
    if vendor == "postgresql":
        _say(f"goal on PostgreSQL: >= {GOAL_EVENTS_PER_SECOND_PG:,} events/s")
    _say(f"replay of a whole batch: accepted {replay.get('accepted')}, duplicates {replay.get('duplicates')}, "
         f"rows {before:,} -> {after:,} (+{after - before})")  # fmt: skip
    for name, ok in checks.items():
        _say(f"  [{'ok' if ok else 'FAILED'}] {name}")
    missed = ratio < GOAL_RATIO or (vendor == "postgresql" and api_rate < GOAL_EVENTS_PER_SECOND_PG)
    _say(
        json.dumps(
            {
                "vendor": vendor,
                "api_events_per_second": round(api_rate),
                "bulk_create_rows_per_second": round(bulk["bulk_create"]["rows_per_second"]),
                "executemany_rows_per_second": round(bulk["executemany"]["rows_per_second"]),
                "multirow_rows_per_second": round(bulk["multirow"]["rows_per_second"]),
                **{f"{way.replace(' ', '_')}_rows_per_second": round(t["rows_per_second"]) for way, t in bulk.items()},
                "ratio": round(ratio, 3),
                "replay_rows_added": after - before,
                "checks_ok": all(checks.values()),
                "goals_met": not missed,
            }
        )
    )
    if not all(checks.values()):
        _say("CHECKS FAILED: " + "; ".join(name for name, ok in checks.items() if not ok))
        return 1
    if args.fail_on_miss and missed:
        _say("goal missed (--fail-on-miss)")
        return 1
    return 0


# --- the Django side (a subprocess with the bench's environment) ------------------------------------------------


def _event_columns(given: list[str]) -> tuple[list[str], list]:
    """PartnerUsageEvent's columns (every concrete field but the id, from ``_meta``): the ``given``
    attnames first, in that order, then the others with their defaults (NULL for a nullable one).
    A required column the bench does not give stops it here, by name."""
    from django.db import connection

    from partners.models import PartnerUsageEvent

    fields = {f.attname: f for f in PartnerUsageEvent._meta.concrete_fields if not f.primary_key}
    unknown = [name for name in given if name not in fields]
    if unknown:
        raise SystemExit(f"PartnerUsageEvent has no field(s) {unknown}: update bench/partner_ingest.py")
    columns = [fields[name].column for name in given]
    defaults = []
    for name, f in fields.items():
        if name in given:
            continue
        if f.has_default():
            defaults.append(f.get_db_prep_save(f.get_default(), connection))
        elif f.null:
            defaults.append(None)
        else:
            raise SystemExit(f"PartnerUsageEvent.{name} is required and has no default: bench/partner_ingest.py must")
        columns.append(f.column)
    return columns, defaults


def _copy(connection, copy_sql: str, rows: list[tuple]) -> None:
    """PostgreSQL's COPY FROM STDIN of ``rows`` on ``connection`` (psycopg 3's copy, row by row)."""
    with connection.cursor() as cursor, cursor.cursor.copy(copy_sql) as copy:
        for row in rows:
            copy.write_row(row)


def _parallel_insert(way, connections_n, total, partner_id, run_id, insert, copy_sql, constants) -> float:
    """``way`` (executemany or copy) over ``connections_n`` threads, each on its own database connection
    with a contiguous share of the rows, 1,000-row transactions; the wall time from a common start."""
    import threading

    from django.db import connection, transaction

    occurred, received, defaults = constants
    start_line = threading.Barrier(connections_n + 1)
    done = threading.Barrier(connections_n + 1)
    errors: list[BaseException] = []
    share = -(-total // connections_n)

    def worker(number: int) -> None:
        try:
            connection.ensure_connection()
            first, last = number * share, min(total, (number + 1) * share)
            batches = [
                [
                    (partner_id, f"{run_id}-p{way}-{i}", f"cust-{i % 997}", "Llama-3.3-70B-Instruct", 812, 164,
                     1 + i % 50, "usd", occurred, received, *defaults)
                    for i in range(begin, min(begin + BATCH, last))
                ]
                for begin in range(first, last, BATCH)
            ]  # fmt: skip
            start_line.wait(timeout=60)
            for rows in batches:
                with transaction.atomic():
                    if way == "copy":
                        _copy(connection, copy_sql, rows)
                    else:
                        with connection.cursor() as cursor:
                            cursor.executemany(insert, rows)
        except BaseException as error:
            errors.append(error)
            start_line.abort()
        finally:
            connection.close()
            with contextlib.suppress(threading.BrokenBarrierError):
                done.wait(timeout=600)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(connections_n)]
    for thread in threads:
        thread.start()
    start_line.wait(timeout=60)
    began = time.perf_counter()
    done.wait(timeout=600)
    seconds = time.perf_counter() - began
    if errors:
        raise errors[0]
    return seconds


def django_side(command: str, spec: dict) -> int:
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    from datetime import datetime, timedelta

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import transaction
    from django.utils import timezone

    from partners import services as partners
    from partners.models import Partner, PartnerUsageEvent

    run_id = spec["run_id"]
    if command == "setup":
        call_command("migrate", interactive=False, verbosity=0)
        _, secret = partners.partner_create(
            slug=run_id, name=f"Bench {run_id}", share_bps=1500, contact_email="bench@tierlab.localhost"
        )
        # Yesterday noon: inside the accepted window whatever the time of the run.
        when = (timezone.now() - timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)
        result = {"secret": secret, "event_time": when.isoformat().replace("+00:00", "Z")}
    elif command == "count":
        partner = Partner.objects.get(slug=run_id)
        rows = PartnerUsageEvent.objects.filter(partner=partner).exclude(event_id__startswith=f"{run_id}-warm").count()
        result = {"rows": rows}
    elif command == "bulk":
        # The same rows, straight into the same table, under partners of their own, three plain ways:
        # the ORM's bulk_create, the cursor's executemany of one INSERT ... VALUES per row (psycopg 3
        # pipelines it on PostgreSQL), one multi-row INSERT. Only the INSERTs are timed, one transaction
        # per 1,000 rows.
        from django.db import connection

        when = datetime.fromisoformat(spec["event_time"])
        now = timezone.now()
        total = spec["rows"]
        timings = {}
        table = connection.ops.quote_name(PartnerUsageEvent._meta.db_table)
        given = ["partner_id", "event_id", "customer", "model", "prompt_tokens", "completion_tokens",
                 "amount_cents", "currency", "occurred_at", "received_at"]  # fmt: skip
        columns, defaults = _event_columns(given)
        quoted = ", ".join(connection.ops.quote_name(c) for c in columns)
        placeholders = f"({', '.join(['%s'] * len(columns))})"
        insert = f"INSERT INTO {table} ({quoted}) VALUES {placeholders}"  # noqa: S608 - names from _meta
        occurred = connection.ops.adapt_datetimefield_value(when)
        received = connection.ops.adapt_datetimefield_value(now)
        pg = connection.vendor == "postgresql"
        connections_n = int(spec.get("connections") or 1)
        ways = ["bulk_create", "executemany", "multirow"] + (["copy"] if pg else [])
        # The same number of database connections as the API's workers, in parallel (issue 17: a fair
        # baseline): on PostgreSQL the plain inserts may use the parallelism the API has.
        ways += [
            f"{way} x{connections_n}" for way in ("executemany", "copy") if connections_n > 1 and (pg or way != "copy")
        ]
        copy_sql = f"COPY {table} ({quoted}) FROM STDIN"
        for way in ways:
            partner, _ = partners.partner_create(
                slug=f"{run_id}-{way.replace(' ', '')}", name=way, share_bps=1500, contact_email="b@tierlab.localhost"
            )
            cpu_began = time.process_time()
            if " x" in way:
                seconds = _parallel_insert(
                    way.split()[0], connections_n, total, partner.pk, run_id, insert, copy_sql,
                    (occurred, received, defaults),
                )  # fmt: skip
                timings[way] = {
                    "rows": total, "seconds": seconds, "rows_per_second": total / seconds if seconds else 0.0,
                    "stored": PartnerUsageEvent.objects.filter(partner=partner).count(),
                    "cpu_us_per_row": (time.process_time() - cpu_began) / total * 1e6 if total else 0.0,
                }  # fmt: skip
                continue
            seconds = 0.0
            for start in range(0, total, BATCH):
                ids = range(start, min(start + BATCH, total))
                if way == "bulk_create":
                    rows = [
                        PartnerUsageEvent(
                            partner=partner, event_id=f"{run_id}-{i}", customer=f"cust-{i % 997}",
                            model="Llama-3.3-70B-Instruct", prompt_tokens=812, completion_tokens=164,
                            amount_cents=1 + i % 50, currency="usd", occurred_at=when, received_at=now,
                        )
                        for i in ids
                    ]  # fmt: skip
                else:  # executemany and multirow: plain tuples, in the order of ``columns``
                    rows = [
                        (partner.pk, f"{run_id}-{i}", f"cust-{i % 997}", "Llama-3.3-70B-Instruct", 812, 164,
                         1 + i % 50, "usd", occurred, received, *defaults)
                        for i in ids
                    ]  # fmt: skip
                if way == "multirow":  # one INSERT ... VALUES (...), (...), ... statement per 1,000 rows
                    statement = f"INSERT INTO {table} ({quoted}) VALUES " + ", ".join([placeholders] * len(rows))  # noqa: S608
                    flat = [value for row in rows for value in row]
                began = time.perf_counter()
                with transaction.atomic():
                    if way == "bulk_create":
                        PartnerUsageEvent.objects.bulk_create(rows, batch_size=BATCH)
                    elif way == "executemany":
                        with connection.cursor() as cursor:
                            cursor.executemany(insert, rows)
                    elif way == "copy":
                        _copy(connection, copy_sql, rows)
                    else:
                        with connection.cursor() as cursor:
                            cursor.execute(statement, flat)
                seconds += time.perf_counter() - began
            timings[way] = {
                "rows": total,
                "seconds": seconds,
                "rows_per_second": total / seconds if seconds else 0.0,
                "stored": PartnerUsageEvent.objects.filter(partner=partner).count(),
                "cpu_us_per_row": (time.process_time() - cpu_began) / total * 1e6 if total else 0.0,
            }
        result = timings
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
