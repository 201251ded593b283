"""Django-side steps of bench/billing_close.py, each run in a subprocess of the project's virtualenv:

    .venv/bin/python -m bench._billing_close_tasks migrate
    .venv/bin/python -m bench._billing_close_tasks seed      --spec '{"n": 100000, "now": ISO, ...}'
    .venv/bin/python -m bench._billing_close_tasks close     --spec '{"now": ISO, "profile": false, ...}'
    .venv/bin/python -m bench._billing_close_tasks customers --spec '{"n": 1000, "out": PATH}'
    .venv/bin/python -m bench._billing_close_tasks pay       --spec '{"now": ISO, ...}'

The caller sets DJANGO_SETTINGS_MODULE, DATABASE_URL (the bench's own database), STRIPE_API_BASE (the
bench's localstripe), EMAIL_URL and DEBUG. Each step prints one JSON object alone on the last line of
its stdout. Nothing here changes the engine: it is called through its public functions
(billing.run.billing_periods_close, billing.run.billing_run) and the gateway
(billing.stripe_gateway.customer_create, payment_method_attach).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import cProfile
import io
import json
import os
import pstats
import re
import signal
import sys
import threading
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta

# Subscriptions alternate between Plus (fee only) and Pro (fee + overage billing). Every Pro team has
# one usage record in the period that ended; every OVERAGE_EVERY-th Pro team used more than Pro's
# 200M included tokens, so its renewal invoice gets an overage line as well.
ANCHOR_DAYS = 31  # anchors on Jan 1..31 (clamped month ends included: Jan 29-31 renew on Feb 28)
ANCHOR_JITTER_SECONDS = 2400
OVERAGE_EVERY = 10
OVERAGE_TOKENS = 250_000_000  # past Pro's included tokens (200M in the seed catalog)
SMALL_TOKENS = 12_345
PLUS, PRO = "plus", "pro"


def _django() -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"  # never an inherited test settings module
    import django

    django.setup()


def _emit(payload: dict) -> None:
    sys.stdout.write("\n" + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _parse_now(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# --- Counting statements --------------------------------------------------------------------------------


class StatementCounter:
    """A connection.execute_wrapper: counts and times every statement by kind (no SQL kept)."""

    _INSERT = re.compile(r'\bINSERT INTO "?(\w+)', re.I)
    _UPDATE = re.compile(r'(?<!FOR )\bUPDATE "?(\w+)', re.I)  # not SELECT ... FOR UPDATE
    _FROM = re.compile(r'\bFROM "?(\w+)', re.I)

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.kinds: dict[str, list] = {}  # kind -> [count, seconds]
        self.lock = threading.Lock()  # the close's threads share one counter (see close)

    def kind(self, sql: str) -> str:
        if m := self._INSERT.search(sql):
            return f"insert {m.group(1)}"
        if m := self._UPDATE.search(sql):
            return f"update {m.group(1)}"
        head = sql.lstrip()[:20].upper()
        if head.startswith(("SELECT", "WITH")):
            if "usage_usagerecord" in sql:
                return "select usage_usagerecord"
            m = self._FROM.search(sql)
            return f"select {m.group(1) if m else '?'}"
        return head.split(" ", 1)[0].lower() or "?"

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            took = time.perf_counter() - started
            kind = self.kind(sql)
            with self.lock:
                self.count += 1
                self.seconds += took
                entry = self.kinds.setdefault(kind, [0, 0.0])
                entry[0] += 1
                entry[1] += took

    def as_dict(self) -> dict:
        return {
            "count": self.count,
            "seconds": self.seconds,
            "kinds": {k: {"count": c, "seconds": s} for k, (c, s) in sorted(self.kinds.items())},
        }


# --- Other programs on the machine ------------------------------------------------------------------------
# The figures are wall-clock times on a small machine: a load test running meanwhile shows up in them.
# Each measurement records how much CPU other programs used during it (as bench/api_overhead.py does):
# every live process except this one, the bench's database server (the postmaster and its children,
# BENCH_PG_POSTMASTER), the backends serving the bench's own databases on a server it did not start
# (--database-url: they are the close's work, see bench_database_prefix) and localstripe
# (BENCH_LOCALSTRIPE_PID).


def cpu_snapshot() -> dict[int, tuple[int, str, int]]:
    """Every process: (parent pid, name, utime + stime ticks). A PostgreSQL backend serving one of the
    bench's databases is named "bench-database" (see bench_database_prefix), read while it runs: one
    that exits meanwhile (the close's thread connections) could not be told apart afterwards."""
    found = {}
    prefix = bench_database_prefix().encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                head, tail = fh.read().rsplit(")", 1)
            name = head.split("(", 1)[-1]
            if name.startswith("postgres"):
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    if prefix in fh.read():
                        name = "bench-database"
        except (OSError, ValueError):
            continue
        fields = tail.split()
        found[int(entry.name)] = (int(fields[1]), name, int(fields[11]) + int(fields[12]))
    return found


def _ours(snapshots: list[dict], roots: set[int]) -> set[int]:
    parents = {pid: info[0] for snap in snapshots for pid, info in snap.items()}
    ours = set()
    for pid in parents:
        seen, current = 0, pid
        while current and seen < 64:
            if current in roots:
                ours.add(pid)
                break
            current, seen = parents.get(current, 0), seen + 1
    return ours


def bench_roots() -> set[int]:
    roots = {os.getpid()}
    for name in ("BENCH_PG_POSTMASTER", "BENCH_LOCALSTRIPE_PID", "BENCH_PARENT_PID"):
        if os.environ.get(name, "").isdigit():
            roots.add(int(os.environ[name]))
    return roots


def bench_database_prefix() -> str:
    """The names of the bench's own databases start with this (billing_close.PostgresServer.prefix): a
    PostgreSQL backend serving one of them ("postgres: user tierlab_bench_<pid>_close_100000 ...", a
    child of a server the bench did not start, with --database-url) is the bench's work."""
    parent = os.environ.get("BENCH_PARENT_PID", "")
    return f"tierlab_bench_{parent if parent.isdigit() else os.getpid()}_"


def foreign_cpu(before: dict, after: dict, roots: set[int], pids: frozenset[int] = frozenset()) -> dict:
    """CPU seconds that processes other than the bench's used between two snapshots, and the top ones.
    The bench's: its own processes and their children, and the database backends serving its databases."""
    hz = os.sysconf("SC_CLK_TCK")
    ours = _ours([before, after], roots)
    used: dict[str, float] = {}
    for pid, (_, name, ticks) in after.items():
        if pid in ours or pid in pids or "bench-database" in (name, before.get(pid, (0, "", 0))[1]):
            continue
        delta = (ticks - before.get(pid, (0, name, 0))[2]) / hz
        if delta > 0:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    name = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()[:50] or name
            except OSError:
                pass
            used[name] = used.get(name, 0.0) + delta
    top = sorted(used.items(), key=lambda item: -item[1])[:3]
    return {"seconds": sum(used.values()), "top": ", ".join(f"{name} {sec:.1f}s" for name, sec in top)}


class CpuWatch:
    """``with CpuWatch() as watch: ...``; then ``watch.result`` (see foreign_cpu)."""

    def __init__(self) -> None:
        # Also the bench's: processes added here meanwhile (the close's thread backends, which may be
        # exiting, nameless, when the last snapshot is taken).
        self.pids: set[int] = set()

    def __enter__(self) -> CpuWatch:
        self.roots = bench_roots()
        self.before = cpu_snapshot()
        return self

    def __exit__(self, *exc) -> None:
        self.result = foreign_cpu(self.before, cpu_snapshot(), self.roots, frozenset(self.pids))


def _counts(now: datetime) -> dict:
    from django.db.models import Sum

    from accounts.models import AuditEntry
    from billing.models import Invoice, InvoiceLine, Payment
    from tiers.models import Subscription

    due = Subscription.objects.filter(
        current_period_end__lte=now, status__in=[Subscription.Status.ACTIVE, Subscription.Status.TRIALING]
    ).count()
    return {
        "subscriptions": Subscription.objects.count(),
        "due": due,
        "invoices": Invoice.objects.count(),
        "invoices_open": Invoice.objects.filter(status=Invoice.Status.OPEN).count(),
        "invoices_paid": Invoice.objects.filter(status=Invoice.Status.PAID).count(),
        "lines": InvoiceLine.objects.count(),
        "overage_lines": InvoiceLine.objects.filter(kind=InvoiceLine.Kind.OVERAGE).count(),
        "invoiced_cents": int(Invoice.objects.aggregate(t=Sum("total_cents"))["t"] or 0),
        "payments": Payment.objects.count(),
        "payments_succeeded": Payment.objects.filter(status=Payment.Status.SUCCEEDED).count(),
        "audit": AuditEntry.objects.count(),
    }


# --- Steps --------------------------------------------------------------------------------------------------


def migrate(spec: dict) -> dict:
    _django()
    from django.core.management import call_command

    started = time.perf_counter()
    call_command("migrate", interactive=False, verbosity=0)
    call_command("seed_tiers", stdout=io.StringIO())
    return {"seconds": time.perf_counter() - started}


def _profiles(now: datetime) -> list[tuple[int, datetime, datetime, datetime, datetime]]:
    """(k, anchor, period start, period end, usage time) for k = i % ANCHOR_DAYS: the period that ended
    most recently before ``now`` for an anchor on Jan k+1 (hours vary), computed with core/periods.py."""
    from core.periods import period_containing

    rows = []
    for k in range(ANCHOR_DAYS):
        anchor = datetime(now.year if now.month > 1 else now.year - 1, 1, k + 1, (5 * k) % 24, 17, tzinfo=UTC)
        current_start, _ = period_containing(anchor, "month", now)
        start, end = period_containing(anchor, "month", current_start - timedelta(microseconds=1))
        assert end == current_start <= now, (anchor, start, end, now)
        rows.append((k, anchor, start, end, start + timedelta(days=1, minutes=k)))
    return rows


def _columns_and_values(model, given: dict[str, tuple[str, list]], *, pg: bool, created: datetime):
    """The INSERT's column list and SELECT list (and the latter's parameters) for ``model``, from its
    ``_meta``: every concrete field, with the SQL expression ``given`` for it (by attname), else the
    value Django would store for a new instance (its default; NULL when nullable; ``created`` for
    auto_now/auto_now_add), else the database's own (an auto primary key). A required field with no
    default and nothing given, or a unique one that would get one value for every row, stops the seed
    with its name: a new column can never break the seed silently or make it insert rubbish."""
    from django.db import connection

    fields = model._meta.concrete_fields
    unknown = set(given) - {f.attname for f in fields}
    if unknown:
        raise SystemExit(f"{model.__name__} has no field(s) {sorted(unknown)}: update bench/_billing_close_tasks.py")
    columns, select, params = [], [], []
    for f in fields:
        if f.attname in given:
            expression, values = given[f.attname]
        elif f.primary_key:
            continue  # the database numbers the rows
        else:
            if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
                value = created
            else:
                value = f.get_default()
                if value is None and not f.null:
                    raise SystemExit(
                        f"{model.__name__}.{f.name} is required and has no default: bench/_billing_close_tasks.py "
                        "must give it a value"
                    )
                if f.unique and value is not None:
                    raise SystemExit(f"{model.__name__}.{f.name} is unique: bench/_billing_close_tasks.py must give it")
            # Typed on PostgreSQL: an untyped parameter in a SELECT list would be text.
            expression = f"CAST(%s AS {f.cast_db_type(connection)})" if pg else "%s"
            values = [f.get_db_prep_save(value, connection)]
        columns.append(connection.ops.quote_name(f.column))
        select.append(expression)
        params += values
    return columns, select, params


def seed(spec: dict) -> dict:
    """``n`` teams, each with an owner, a subscription due at ``now`` on Plus or Pro (active, no trial),
    a BillingCustomer (fake ids, or the real localstripe ones in ``customers``), and one usage record per
    Pro team. Set-based: one INSERT ... SELECT over a generated series per table (generate_series on
    PostgreSQL, a recursive CTE on SQLite): the services would take minutes for 100,000 teams. The
    columns come from each model's ``_meta`` (``_columns_and_values``); the bench names only the values
    that matter to the close."""
    _django()
    from django.db import connection, transaction

    from accounts.models import Membership, Team, User
    from billing.models import BillingCustomer
    from tiers.models import Subscription, Tier
    from usage.models import UsageRecord

    n = int(spec["n"])
    now = _parse_now(spec["now"])
    customers = None
    if spec.get("customers"):
        with open(spec["customers"]) as fh:
            customers = json.load(fh)[:n]
        if len(customers) < n:
            raise SystemExit(f"only {len(customers)} Stripe customers for {n} teams")
    pg = connection.vendor == "postgresql"
    qn = connection.ops.quote_name
    tiers = {t.slug: t for t in Tier.objects.filter(slug__in=[PLUS, PRO])}
    dt = connection.ops.adapt_datetimefield_value if not pg else (lambda v: v)
    ts = "CAST(%s AS timestamptz)" if pg else "%s"

    profiles = _profiles(now)
    values = ", ".join(f"({k}, {ts}, {ts}, {ts}, {ts})" for k, *_ in profiles)
    profile_params = [dt(v) for _, *times in profiles for v in times]
    if pg:
        series_with = f"p(k, anchor, pstart, pend, used) AS (VALUES {values})"
        series_from = f"generate_series(1, {n}) AS g(i) JOIN p ON p.k = g.i %% {ANCHOR_DAYS}"
        with_kw = "WITH"
    else:
        series_with = (
            f"g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {n}),"  # noqa: S608 - n is an int
            f" p(k, anchor, pstart, pend, used) AS (VALUES {values})"
        )
        series_from = f"g JOIN p ON p.k = g.i %% {ANCHOR_DAYS}"
        with_kw = "WITH RECURSIVE"
    text_i = "CAST(g.i AS text)"
    # Anchors differ per subscription, as real ones do (the moment of the first payment): the profile's
    # time plus 0 to 39:59 minutes, which never crosses a day (profile times are at :17 past the hour),
    # so the periods stay the ones core/periods.py computes for the shifted anchor.
    offset = f"((g.i * 7919) %% {ANCHOR_JITTER_SECONDS})"
    if pg:

        def shifted(column: str) -> str:
            return f"({column} + {offset} * interval '1 second')"
    else:

        def shifted(column: str) -> str:
            return f"datetime({column}, '+' || {offset} || ' seconds')"

    created = now - timedelta(days=90)

    def sql(expression: str) -> tuple[str, list]:
        return expression, []

    def param(value) -> tuple[str, list]:
        return ts if isinstance(value, datetime) else "%s", [dt(value) if isinstance(value, datetime) else value]

    def insert(model, given: dict[str, tuple[str, list]], where: str = "") -> int:
        columns, select, params = _columns_and_values(model, given, pg=pg, created=created)
        statement = (
            f"{with_kw} {series_with} INSERT INTO {qn(model._meta.db_table)} ({', '.join(columns)})"  # noqa: S608 - ours
            f" SELECT {', '.join(select)} FROM {series_from} {where}"
        )
        with connection.cursor() as cursor:
            cursor.execute(statement, [*profile_params, *params])
            return cursor.rowcount

    tokens = f"CASE WHEN g.i %% {2 * OVERAGE_EVERY} = 0 THEN {OVERAGE_TOKENS} ELSE {SMALL_TOKENS} END"
    started = time.perf_counter()
    with transaction.atomic():
        user0 = User.objects.order_by("-id").values_list("id", flat=True).first() or 0
        team0 = Team.objects.order_by("-id").values_list("id", flat=True).first() or 0
        insert(
            User,
            {
                "id": sql(f"{user0} + g.i"),
                "password": sql("'!'"),  # an unusable password, as set_unusable_password() stores
                "email": sql(f"'bench-' || {text_i} || '@bench.invalid'"),
                "date_joined": param(created),
            },
        )
        insert(
            Team,
            {
                "id": sql(f"{team0} + g.i"),
                "name": sql(f"'Bench team ' || {text_i}"),
                "slug": sql(f"'bench-team-{team0}-' || {text_i}"),
                "is_personal": param(True),
            },
        )
        insert(
            Membership,
            {
                "user_id": sql(f"{user0} + g.i"),
                "team_id": sql(f"{team0} + g.i"),
                "role": param(Membership.Role.OWNER.value),
            },
        )
        insert(
            Subscription,
            {
                "team_id": sql(f"{team0} + g.i"),
                "tier_id": sql(f"CASE WHEN g.i %% 2 = 0 THEN {tiers[PRO].pk} ELSE {tiers[PLUS].pk} END"),
                "status": param(Subscription.Status.ACTIVE.value),
                "billing_anchor": sql(shifted("p.anchor")),
                "current_period_start": sql(shifted("p.pstart")),
                "current_period_end": sql(shifted("p.pend")),
            },
        )
        insert(
            UsageRecord,
            {
                "request_id": sql(f"'bench-' || {text_i}"),
                "team_id": sql(f"{team0} + g.i"),
                "model": param("Llama-3.3-70B-Instruct"),
                "prompt_tokens": sql("0"),
                "completion_tokens": sql(tokens),
                "total_tokens": sql(tokens),
                "created_at": sql("p.used"),
            },
            where="WHERE g.i %% 2 = 0",
        )
        if customers is None:
            insert(
                BillingCustomer,
                {
                    "team_id": sql(f"{team0} + g.i"),
                    "stripe_customer_id": sql(f"'cus_bench_' || {text_i}"),
                    "default_payment_method_id": sql(f"'pm_bench_' || {text_i}"),
                    "card_brand": param("visa"),
                    "card_last4": param("4242"),
                },
            )
        else:
            BillingCustomer.objects.bulk_create(
                [
                    BillingCustomer(
                        team_id=team0 + i + 1,
                        stripe_customer_id=c["customer"],
                        default_payment_method_id=c["payment_method"],
                        card_brand=c["brand"],
                        card_last4=c["last4"],
                    )
                    for i, c in enumerate(customers)
                ]
            )
        if pg:
            with connection.cursor() as cursor:
                for model in (User, Team):
                    table = model._meta.db_table
                    cursor.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {qn(table)}))"  # noqa: S608
                    )
    seeded = time.perf_counter() - started
    if pg:
        # What autovacuum would do soon after a bulk load; the close's plans should not depend on luck.
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    overage = n // (2 * OVERAGE_EVERY)
    plus, pro = (n + 1) // 2, n // 2
    # Computed here from the tiers' own figures, not by the code under test: an independent expectation.
    pro_tier = tiers[PRO]
    overage_each = -(-(OVERAGE_TOKENS - pro_tier.monthly_tokens) * pro_tier.overage_cents_per_million_tokens // 10**6)
    expected_cents = plus * tiers[PLUS].price_cents + pro * pro_tier.price_cents + overage * overage_each
    return {
        "n": n,
        "seconds": seeded,
        "analyze_seconds": time.perf_counter() - started - seeded,
        "expected": {"invoices": n, "lines": n + overage, "overage_lines": overage, "cents": expected_cents},
        "counts": _counts(now),
    }


def _profile_top(profiler: cProfile.Profile, top: int) -> dict:
    out = {}
    for key in ("cumulative", "tottime"):
        buffer = io.StringIO()
        stats = pstats.Stats(profiler, stream=buffer)
        stats.strip_dirs().sort_stats(key).print_stats(top)
        text = buffer.getvalue()
        start = text.find("   ncalls")
        out[key] = text[start:].rstrip() if start >= 0 else text.rstrip()
    return out


def _explain_first_batch(now: datetime) -> str:
    """The database's profile of the set-based close: EXPLAIN (ANALYZE, WAL) of its first batch's
    statement (billing/close_pg.py), then its deferred foreign-key checks run and timed, all rolled
    back. Node times include EXPLAIN's own timing overhead: read shares."""
    from django.db import connection, transaction

    from billing import close_pg
    from billing.services import free_tier

    params = {"last_id": 0, "upto": close_pg._NO_UPPER_BOUND, "now": now, "batch": 5_000}
    params.update(free_id=free_tier().pk, wall=now)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL TimeZone = 'UTC'")
        cursor.execute("EXPLAIN (ANALYZE, WAL) " + close_pg._statement(), params)
        lines = [row[0] for row in cursor.fetchall()]
        started = time.perf_counter()
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the checks COMMIT would run
        checks = time.perf_counter() - started
        transaction.set_rollback(True)
    # The parts that matter: each CTE's top node (rows, time), the total, the foreign-key checks.
    wanted = [line for line in lines if line.lstrip().startswith(("CTE ", "Execution Time", "Planning Time"))]
    tops = []
    for index, line in enumerate(lines):
        if line.lstrip().startswith("CTE ") and index + 1 < len(lines):
            tops.append(f"{line.strip()}: {lines[index + 1].strip()}")
    summary = [*tops, *[line.strip() for line in wanted if not line.lstrip().startswith("CTE ")]]
    summary.append(f"deferred foreign-key checks (run at COMMIT): {1000 * checks:.1f} ms")
    return "\n".join(summary)


def close(spec: dict) -> dict:
    """billing_periods_close twice on the seeded database: the first closes every due period (timed,
    statements counted), the second must find nothing."""
    _django()
    from django.db import connection

    from billing import close as billing_close
    from billing import run as billing

    now = _parse_now(spec["now"])
    batch_size = int(spec.get("batch_size") or billing_close.CLOSE_BATCH_SIZE)
    # "sql": on PostgreSQL the database plans each batch (billing/close_pg.py); "python": the Python
    # planner, what SQLite runs and what PostgreSQL ran before issue 17 (the before/after comparison).
    billing_close.SET_BASED_ON_POSTGRESQL = spec.get("planner", "sql") == "sql"
    explained = ""
    if spec.get("profile") and billing_close.SET_BASED_ON_POSTGRESQL and connection.vendor == "postgresql":
        # The Python side of the set-based close is a wait: profile the database side, on the first
        # batch, before the close (rolled back: the rows stay due; only invoice ids are spent).
        explained = _explain_first_batch(now)
    concurrency = int(spec.get("concurrency") or 1)
    before = _counts(now)  # also opens the connection: not part of the timing
    counter = StatementCounter()
    profiler = cProfile.Profile() if spec.get("profile") else None
    watch = CpuWatch()
    backends = BackendCpu()
    with connection.execute_wrapper(counter), watch, backends.watching(counter, ours=watch.pids):
        cpu_before = time.process_time()
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        result = billing.billing_periods_close(now=now, batch_size=batch_size, concurrency=concurrency)
        if profiler is not None:
            profiler.disable()
        seconds = time.perf_counter() - started
        cpu = {"client": time.process_time() - cpu_before}
    if backends.seconds is not None:
        cpu["database"] = backends.seconds
        cpu["backends"] = backends.count
    after = _counts(now)
    counter2 = StatementCounter()
    with connection.execute_wrapper(counter2):
        started = time.perf_counter()
        result2 = billing.billing_periods_close(now=now, batch_size=batch_size, concurrency=concurrency)
        seconds2 = time.perf_counter() - started
    after2 = _counts(now)
    payload = {
        "batch_size": batch_size,
        "concurrency": concurrency,
        "planner": "sql" if billing_close.SET_BASED_ON_POSTGRESQL and connection.vendor == "postgresql" else "python",
        "cpu": cpu,
        "seconds": seconds,
        "result": vars(result),
        "statements": counter.as_dict(),
        "before": before,
        "after": after,
        "again": {"seconds": seconds2, "result": vars(result2), "statements": counter2.as_dict(), "after": after2},
        "vendor": connection.vendor,
        "server_version": _server_version(),
        "foreign_cpu": watch.result,
    }
    if profiler is not None:
        payload["profile"] = _profile_top(profiler, int(spec.get("top", 25)))
        if explained:
            payload["profile"]["database"] = explained
    return payload


def _proc_cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BackendCpu:
    """The CPU seconds (user + system) of every PostgreSQL backend serving this process during a
    measurement, read from /proc (the server must run on this machine): the main connection's from
    its value at the start, and each connection opened meanwhile (the close's threads, with
    TIERLAB_CLOSE_CONCURRENCY) whole, from its start. Those close when their thread is done and their
    backend exits: a sampler reads them (only them: the main one is read at the end) every
    SAMPLE_SECONDS, so at most that much of each one's last moments is missed. ``seconds`` is None
    where nothing could be read (SQLite runs in this process: its CPU is the client's)."""

    SAMPLE_SECONDS = 0.02

    def __init__(self) -> None:
        self.seconds: float | None = None
        self.count = 0
        self.ours: set[int] = set()  # every backend pid seen: CpuWatch's (watching's ``ours``)
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._lock = threading.Lock()

    def _add(self, pid: int, start: float) -> None:
        with self._lock:
            self.ours.add(pid)
            self._start.setdefault(pid, start)
            self._last.setdefault(pid, start)

    def _sample(self, *, main: int = 0) -> None:
        with self._lock:
            pids = [pid for pid in self._last if pid != main]
        for pid in pids:
            value = _proc_cpu_seconds(pid)
            if value is not None:
                with self._lock:
                    self._last[pid] = max(self._last[pid], value)

    @contextlib.contextmanager
    def watching(self, counter: StatementCounter, *, ours: set[int] | None = None):
        from django.db import connection
        from django.db.backends.signals import connection_created

        if ours is not None:
            self.ours = ours
        if connection.vendor != "postgresql":
            yield self
            return
        main = connection.connection.info.backend_pid
        first = _proc_cpu_seconds(main)
        if first is None:  # a server on another machine: nothing to read
            yield self
            return
        self._add(main, first)

        def opened(sender, connection, **kwargs) -> None:
            # A thread's connection (the close's pool): counted whole, its statements counted too.
            self._add(connection.connection.info.backend_pid, 0.0)
            connection.execute_wrappers.append(counter)

        stop = threading.Event()

        def sampler() -> None:
            while not stop.wait(self.SAMPLE_SECONDS):
                self._sample(main=main)

        thread = threading.Thread(target=sampler, name="bench-backend-cpu", daemon=True)
        connection_created.connect(opened)
        thread.start()
        try:
            yield self
        finally:
            connection_created.disconnect(opened)
            stop.set()
            thread.join()
            self._sample()
            self.seconds = sum(self._last[pid] - self._start[pid] for pid in self._last)
            self.count = len(self._last)


def _server_version() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW server_version")
        else:
            cursor.execute("SELECT sqlite_version()")
        return str(cursor.fetchone()[0])


def customers(spec: dict) -> dict:
    """``n`` Stripe customers, each with pm_card_visa attached as its default, through the gateway.
    Written to ``out`` (JSON) for ``seed``; no database is used."""
    _django()
    from billing import stripe_gateway as gateway

    n = int(spec["n"])
    made = []
    started = time.perf_counter()
    for i in range(1, n + 1):
        customer_id = gateway.customer_create(
            email=f"bench-{i}@bench.invalid", team_id=i, idempotency_key=f"bench:team:{i}:customer"
        )
        card = gateway.payment_method_attach(customer_id=customer_id, payment_method="pm_card_visa", make_default=True)
        made.append(
            {
                "customer": customer_id,
                "payment_method": card.payment_method_id,
                "brand": card.brand,
                "last4": card.last4,
            }
        )
    seconds = time.perf_counter() - started
    with open(spec["out"], "w") as fh:
        json.dump(made, fh)
    return {"n": n, "seconds": seconds, "requests": 3 * n}


def _stripe_payment_intents() -> int:
    """How many PaymentIntents localstripe holds (listed 100 at a time)."""
    from django.conf import settings

    base = settings.STRIPE_API_BASE.rstrip("/")
    auth = "Basic " + base64.b64encode(f"{settings.STRIPE_SECRET_KEY}:".encode()).decode()
    total, after = 0, None
    for _ in range(100_000):
        query = {"limit": "100", **({"starting_after": after} if after else {})}
        url = f"{base}/v1/payment_intents?{urllib.parse.urlencode(query)}"
        request = urllib.request.Request(url)  # noqa: S310 - the bench's localstripe, http://127.0.0.1
        request.add_header("Authorization", auth)
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - 127.0.0.1
            page = json.load(response)
        data = page.get("data") or []
        total += len(data)
        if not page.get("has_more") or not data:
            return total
        after = data[-1]["id"]
    raise RuntimeError("listing PaymentIntents did not end")


def _time_gateway_calls() -> dict[str, list[float]]:
    """Time every call the engine makes into billing.stripe_gateway (the engine calls them as module
    attributes, ``gateway.payment_intent_create(...)``): the wall time of each call, per function, so
    the charge's cost splits into Stripe round trips and our own work. Only this process is affected."""
    from billing import stripe_gateway as gateway

    calls: dict[str, list[float]] = {}
    for name in ("payment_intent_create", "payment_intents_find", "payment_intent_retrieve"):
        original = getattr(gateway, name)

        def timed(*args, _original=original, _name=name, **kwargs):
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                calls.setdefault(_name, []).append(time.perf_counter() - started)

        setattr(gateway, name, timed)
    return calls


def pay(spec: dict) -> dict:
    """The whole pass through localstripe: the local close (timed on its own), then billing_run (which
    finds no period left to close and charges every invoice due, off-session), then billing_run again,
    which must create and charge nothing."""
    _django()
    from django.core import mail
    from django.db import connection

    from billing import run as billing

    now = _parse_now(spec["now"])
    before = _counts(now)
    intents_before = _stripe_payment_intents()
    stripe_calls = _time_gateway_calls()
    local = StatementCounter()
    with connection.execute_wrapper(local):
        started = time.perf_counter()
        closed = billing.billing_periods_close(now=now)
        local_seconds = time.perf_counter() - started
    charge = StatementCounter()
    with connection.execute_wrapper(charge), CpuWatch() as watch:
        started = time.perf_counter()
        run = billing.billing_run(now=now, payment_concurrency=int(spec.get("concurrency") or 1))
        charge_seconds = time.perf_counter() - started
    after = _counts(now)
    intents_after = _stripe_payment_intents()
    emails = len(getattr(mail, "outbox", []))
    again = StatementCounter()
    with connection.execute_wrapper(again):
        started = time.perf_counter()
        run2 = billing.billing_run(now=now)
        again_seconds = time.perf_counter() - started
    after2 = _counts(now)
    intents_after2 = _stripe_payment_intents()
    return {
        "vendor": connection.vendor,
        "concurrency": int(spec.get("concurrency") or 1),
        "local": {"seconds": local_seconds, "result": vars(closed), "statements": local.as_dict()},
        "charge": {"seconds": charge_seconds, "result": vars(run), "statements": charge.as_dict()},
        "again": {"seconds": again_seconds, "result": vars(run2), "statements": again.as_dict(), "after": after2},
        "before": before,
        "after": after,
        "emails": emails,
        "intents": {"before": intents_before, "after": intents_after, "after_again": intents_after2},
        "stripe_calls": stripe_calls,
        "foreign_cpu": watch.result,
    }


STEPS = {"migrate": migrate, "seed": seed, "close": close, "customers": customers, "pay": pay}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--spec", default="{}")
    args = parser.parse_args()
    # The parent stops us with SIGTERM on its own exit or timeout: leave at once, no traceback.
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(143))
    _emit(STEPS[args.step](json.loads(args.spec)))


if __name__ == "__main__":
    main()
