#!/usr/bin/env python3
"""How long one billing pass takes when many subscriptions are due at once (issue 4, DESIGN.md "Money
and time").

One pass is `billing.run.billing_run(now=...)`: a LOCAL part, `billing_periods_close` (renewal
invoices, their lines, the period advance; set-based, billing/close.py), and a PAYMENT part
(every invoice due charged off-session through Stripe, one PaymentIntent each). This bench measures:

  1. the local part for 10,000 and 100,000 due subscriptions on PostgreSQL (a throw-away cluster it
     starts, or --database-url), and for 10,000 on the embedded SQLite default (--sqlite-sizes for more:
     measured at 100,000 it takes minutes there, because the invoice-numbering UPDATE of
     billing/close.py:invoice_numbers_assign is planned as a nested loop on SQLite, quadratic in
     the batch size: ~6 s per batch of 5,000): seconds, cost per subscription,
     SQL statements per batch (counted with connection.execute_wrapper: a fixed number per batch, not
     one per subscription), the time spent inside the database, and the CPU per subscription of this
     process and of the PostgreSQL backend serving it (read from /proc: the server must run here to
     count it). On PostgreSQL each size is closed twice, on copies of one seed, back to back: by the
     Python planner (what PostgreSQL ran before issue 17, and what SQLite runs) and by the set-based
     statement (billing/close_pg.py), with the ratio (--no-compare: the statement only);
  2. the payment part for 1,000 subscriptions through a real localstripe (memory state, started here):
     every team has a Stripe customer with pm_card_visa attached as its default, created through the
     gateway beforehand (that set-up is timed and reported separately, it is not part of the pass);
     on PostgreSQL twice, one at a time and by a pool of --payment-concurrency (default 8), each from
     an empty localstripe, with payments per second and the ratio (the statement counts of a pool run
     miss its threads' connections);
  3. the same pass again on the same data, which must create nothing: 0 periods closed, 0 invoices,
     0 payments (and no PaymentIntent in localstripe), the same row counts.
Checks (any failure exits 1, listed): before the pass every seeded subscription is due, after it none;
exactly one invoice per due subscription, the expected lines (fee, and overage where the seed used
more than Pro includes) and total cents (computed from the tiers' prices, not by the code under
test); every renewal charged once (one PaymentIntent each in localstripe, every invoice paid); the
second pass adds nothing.
The figures are wall-clock times: each measurement waits (up to --quiet-wait) for other programs to
leave the CPUs alone, records the CPU they used during it anyway, and is marked BUSY when that was more
than 5% of one CPU.
Goal (issue 17; issue 4's was 10 s): the local part closes 100,000 subscriptions in under 5 s on
PostgreSQL (50 µs per subscription). When it is
missed (or with --profile), the close is run again on a fresh copy under cProfile and the top
functions are printed.

The data: N teams, each with an owner, a BillingCustomer and a subscription (active, no trial), half on
Plus (fee only), half on Pro (fee + overage billing), anchored on Jan 1..31 (month-end clamping
included), every period ended at the bench's clock (2026-03-01 06:00 UTC). Each Pro team has one
usage record in the ended period; one Pro team in 10 used 250M tokens (50M past Pro's 200M), so its
invoice has an overage line too. Seeded set-based, for speed: one INSERT ... SELECT over
generate_series (a recursive CTE on SQLite) per table, into a freshly migrated database per
measurement; each INSERT's column list is built from the model's _meta, the bench giving only the
values the close depends on (the others get their defaults; a new required column without one stops
the seed by name). The Stripe side goes through the project's gateway.

    .venv/bin/python bench/billing_close.py                  # 10,000 + 100,000 local, 1,000 payments
    .venv/bin/python bench/billing_close.py --quick          # 1,000 + 6,000 local, 100 payments, a profile
                                                             # smoke, no waiting for quiet: the CI check
    .venv/bin/python bench/billing_close.py --skip-postgres  # SQLite only (--skip-sqlite: PostgreSQL only)
    .venv/bin/python bench/billing_close.py --database-url postgres://u:p@127.0.0.1:5432/postgres

--database-url names a PostgreSQL server to use instead of starting one: the bench creates its own
databases on it (tierlab_bench_*) and drops them at the end, so the role needs CREATEDB; the database
in the URL itself is only connected to. Without it, PostgreSQL binaries (Debian's postgresql package)
are needed; as root the cluster runs as the `postgres` user, like .ci/run. Everything binds 127.0.0.1,
every step has a timeout, children are stopped on exit (also on Ctrl-C / TERM), temp files removed.

Exit status: 0 when the bench ran and its checks held (goal met or not; --fail-on-miss makes a missed
goal exit 1), 1 when a check failed or a step broke, 2 when a prerequisite is missing.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import json
import os
import platform
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._billing_close_tasks import bench_roots, cpu_snapshot, foreign_cpu  # noqa: E402 - stdlib only

PYTHON = Path(sys.executable)  # the project's virtualenv: Django comes from it
NOW = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)  # the simulated billing clock: every period ended by then
GOAL_SUBSCRIPTIONS = 100_000
GOAL_SECONDS = 5.0  # issue 17 (issue 4's was 10 s): 50 µs of local work per subscription
BUSY_SHARE = 0.05  # other programs using more than this share of one CPU make a measurement "busy"
LOCALSTRIPE_STARTUP_SECONDS = 30
PG_ROLE, PG_PASSWORD = "tierlab_bench", "tierlab_bench"


def _say(message: str = "") -> None:
    print(message, flush=True)


# --- Children: own process groups, all stopped on exit ---------------------------------------------------
_children: list[subprocess.Popen] = []
_cleanups: list = []  # callables run (once, last registered first) on exit


def _spawn(cmd: list[str], **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    _children.append(proc)
    return proc


def _stop(proc: subprocess.Popen, *, grace: float = 10.0) -> None:
    """TERM the child's process group, KILL it after ``grace`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    if proc in _children:
        _children.remove(proc)


def _cleanup_all() -> None:
    for proc in list(_children):
        _stop(proc, grace=3.0)
    while _cleanups:
        with contextlib.suppress(Exception):
            _cleanups.pop()()


def _on_signal(signum, frame):
    raise SystemExit(128 + signum)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Deadline:
    """The whole run's time budget: every step's timeout is cut to what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def timeout(self, wanted: float) -> float:
        left = self.end - time.monotonic()
        if left <= 1:
            raise RuntimeError("the run's time budget (--max-seconds) is spent")
        return min(wanted, left)


def _last_json(output: str) -> dict:
    for line in reversed(output.strip().splitlines()):
        if line.strip().startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON in output:\n{output[-2000:]}")


def run_step(step: str, env: dict, spec: dict, *, timeout: float, log: Path) -> dict:
    """One step of bench/_billing_close_tasks.py in a subprocess (its own Django, its own settings)."""
    cmd = [str(PYTHON), "-m", "bench._billing_close_tasks", step, "--spec", json.dumps(spec)]
    proc = _spawn(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc, grace=2)
        raise RuntimeError(f"step {step} took more than {timeout:.0f} s") from None
    finally:
        if proc in _children:
            _children.remove(proc)
    with log.open("a") as fh:
        fh.write(f"--- {step} {json.dumps(spec)}\n{out[-20000:]}\n{err[-20000:]}\n")
    if proc.returncode != 0:
        raise RuntimeError(f"step {step} failed ({proc.returncode}):\n{err[-4000:]}")
    return _last_json(out)


# --- localstripe ------------------------------------------------------------------------------------------


def _localstripe_get(base: str, path: str, timeout: float) -> bytes:
    request = urllib.request.Request(base + path)  # noqa: S310 - http://127.0.0.1
    request.add_header("Authorization", "Basic " + base64.b64encode(b"sk_test_bench:").decode())
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return response.read()


def _localstripe_delete(base: str, path: str, timeout: float) -> None:
    request = urllib.request.Request(base + path, method="DELETE")  # noqa: S310 - http://127.0.0.1
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        response.read()


def start_localstripe(env: dict, log_path: Path) -> tuple[subprocess.Popen, str]:
    """``manage.py localstripe`` on a free 127.0.0.1 port, memory state, no webhook; waited on (bounded)."""
    port = _free_port()
    cmd = [str(PYTHON), "manage.py", "localstripe", "--port", str(port), "--state", "memory", "--webhook-url="]
    with log_path.open("wb") as log:
        proc = _spawn(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + LOCALSTRIPE_STARTUP_SECONDS
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"localstripe exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            _localstripe_get(base, "/v1/customers?limit=1", timeout=1)
            return proc, base
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"localstripe did not answer on {base} within {LOCALSTRIPE_STARTUP_SECONDS} s"
                ) from None
            time.sleep(0.1)


# --- Databases --------------------------------------------------------------------------------------------


class SqliteServer:
    """A fresh SQLite file per database, in the bench's temp dir (the embedded default's settings:
    WAL, synchronous=NORMAL, IMMEDIATE transactions come from config/settings.py)."""

    name = "SQLite"

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "sqlite"
        self.dir.mkdir()
        self.version = ""

    def describe(self) -> str:
        return f"SQLite {self.version} (file in {self.dir}, settings from config/settings.py)"

    def url(self, name: str) -> str:
        return f"sqlite:///{self.dir / name}.sqlite3"

    def create(self, name: str, template: str | None = None) -> str:
        if template is not None:
            for suffix in ("", "-wal", "-shm"):
                source = self.dir / f"{template}.sqlite3{suffix}"
                if source.exists():
                    shutil.copyfile(source, self.dir / f"{name}.sqlite3{suffix}")
        return self.url(name)

    def drop(self, name: str) -> None:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / f"{name}.sqlite3{suffix}").unlink()

    def stop(self) -> None:
        pass


class PostgresServer:
    """A PostgreSQL server the bench makes databases on: a throw-away cluster it starts (as .ci/run
    does: initdb in the temp dir, owned by `postgres` when run as root, listening on 127.0.0.1 and a
    free port), or an existing one (--database-url)."""

    name = "PostgreSQL"

    def __init__(self, tmp: Path, deadline: Deadline, database_url: str | None) -> None:
        import psycopg  # from the venv: the bench runs with .venv/bin/python

        self.psycopg = psycopg
        self.tmp = tmp
        self.deadline = deadline
        self.pg_bin: Path | None = None
        self.data: Path | None = None
        self.created: list[str] = []
        self.prefix = f"tierlab_bench_{os.getpid()}_"
        self.version = ""
        self.external = database_url is not None
        if database_url:
            self.admin_url = database_url
            _cleanups.append(self.stop)  # drops the databases the bench made there
        else:
            self._start_cluster()
        parts = urllib.parse.urlsplit(self.admin_url)
        self._base = parts._replace(path="")
        with self._admin() as conn:
            self.version = conn.execute("SHOW server_version").fetchone()[0]
            self.settings = dict(
                conn.execute(
                    "SELECT name, setting || COALESCE(unit, '') FROM pg_settings WHERE name IN"
                    " ('shared_buffers', 'fsync', 'synchronous_commit', 'work_mem', 'max_wal_size')"
                ).fetchall()
            )

    @staticmethod
    def find_bin() -> Path | None:
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
        if candidates:
            return candidates[-1].parent
        initdb = shutil.which("initdb")
        return Path(initdb).resolve().parent if initdb else None

    def _as_owner(self, cmd: list, *, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *map(str, cmd)]
        return subprocess.run(
            [*map(str, cmd)],
            cwd="/",
            capture_output=True,
            text=True,
            timeout=self.deadline.timeout(timeout),
            check=check,
            start_new_session=True,
        )

    def _start_cluster(self) -> None:
        self.pg_bin = self.find_bin()
        if self.pg_bin is None:
            raise FileNotFoundError("no initdb: install Debian's postgresql package, or pass --database-url")
        pg_dir = self.tmp / "postgresql"
        pg_dir.mkdir()
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")  # KeyError: no postgres user to run the cluster as
            os.chmod(self.tmp, 0o755)  # noqa: S103 - the postgres user must reach its data directory inside
            os.chown(pg_dir, owner.pw_uid, owner.pw_gid)
        self.data = pg_dir / "data"
        self.port = _free_port()
        self._as_owner(
            [
                self.pg_bin / "initdb",
                "-D",
                self.data,
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-locale",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ],
            timeout=120,
        )
        # The server's defaults otherwise (fsync and synchronous_commit on, 128MB shared_buffers): the
        # close commits once per batch, so durability is part of what is measured.
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {pg_dir}"
        _cleanups.append(self.stop)
        started = self._as_owner(
            [
                self.pg_bin / "pg_ctl",
                "-D",
                self.data,
                "-l",
                pg_dir / "server.log",
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ],
            timeout=90,
            check=False,
        )
        if started.returncode != 0:
            log = (pg_dir / "server.log").read_text()[-3000:] if (pg_dir / "server.log").exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{log}")
        self._as_owner(
            [
                self.pg_bin / "psql",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                pg_dir,
                "-p",
                self.port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                f"CREATE ROLE {PG_ROLE} LOGIN CREATEDB PASSWORD '{PG_PASSWORD}'",
            ],
            timeout=30,
        )
        self.admin_url = f"postgres://{PG_ROLE}:{PG_PASSWORD}@127.0.0.1:{self.port}/postgres"

    def postmaster_pid(self) -> int:
        """The temp cluster's postmaster (its children are the bench's too); 0 for an external server."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0]) if self.data else 0
        except (OSError, ValueError, IndexError):
            return 0

    def describe(self) -> str:
        where = "existing server (--database-url)" if self.external else f"temp cluster on 127.0.0.1:{self.port}"
        settings = ", ".join(f"{k}={v}" for k, v in sorted(self.settings.items()))
        return f"PostgreSQL {self.version}, {where}; {settings}"

    def _admin(self):
        return self.psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10)

    def url(self, name: str) -> str:
        return urllib.parse.urlunsplit(self._base._replace(path="/" + self.prefix + name))

    def create(self, name: str, template: str | None = None) -> str:
        with self._admin() as conn:
            sql = f'CREATE DATABASE "{self.prefix}{name}"'
            if template is not None:
                sql += f' TEMPLATE "{self.prefix}{template}"'
            conn.execute(sql)
        self.created.append(name)
        return self.url(name)

    def drop(self, name: str) -> None:
        import psycopg  # from the venv, as in _admin

        # FORCE ends the bench's own leftover sessions; a role without pg_signal_backend may not end an
        # autovacuum worker that just started on the fresh rows, so wait for it and try again.
        for attempt in range(40):
            try:
                with self._admin() as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.prefix}{name}" WITH (FORCE)')
                break
            except psycopg.errors.InsufficientPrivilege:
                if attempt == 39:
                    raise
                time.sleep(0.5)
        if name in self.created:
            self.created.remove(name)

    def stop(self) -> None:
        if self.external:
            for name in list(self.created):
                with contextlib.suppress(Exception):
                    self.drop(name)
            return
        if self.data is not None and (self.data / "postmaster.pid").exists():
            result = self._as_owner(
                [self.pg_bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "30", "stop"],
                timeout=40,
                check=False,
            )
            if result.returncode != 0:
                self._as_owner(
                    [self.pg_bin / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "10", "stop"],
                    timeout=20,
                    check=False,
                )
        self.data = None


# --- The bench ----------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.deadline = Deadline(args.max_seconds)
        self.log = tmp / "steps.log"
        self.stripe_base = ""
        self.failures: list[str] = []
        self.local: list[dict] = []  # one per (server, n)
        self.payments: list[dict] = []
        self.profile: dict | None = None
        self.customers: dict | None = None
        self.templates: dict[str, float] = {}
        self.postmaster_pid = 0
        self.localstripe_pid = 0

    def env(self, database_url: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TIERLAB_", "CELERY_", "STRIPE_", "BENCH_"))}
        env.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            DATABASE_URL=database_url,
            DEBUG="0",
            TIERLAB_PRODUCTION="0",
            STRIPE_API_BASE=self.stripe_base or "http://127.0.0.1:9",
            STRIPE_SECRET_KEY="sk_test_tierlab_bench",  # noqa: S106 - localstripe accepts any test key
            EMAIL_URL="memorymail://",  # receipts are rendered and "sent" as in production, kept in memory
            CACHE_URL="locmemcache://",
            CELERY_BROKER_DIR=str(self.tmp / "celery"),
            LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
            BENCH_PARENT_PID=str(os.getpid()),
            BENCH_PG_POSTMASTER=str(self.postmaster_pid),
            BENCH_LOCALSTRIPE_PID=str(self.localstripe_pid),
        )
        return env

    def wait_quiet(self) -> None:
        """Before a measurement: wait (at most --quiet-wait seconds) until other programs leave the CPUs
        alone. The measurement records what they used anyway (foreign_cpu)."""
        if self.args.quiet_wait <= 0:
            return
        deadline = time.monotonic() + self.args.quiet_wait
        roots = bench_roots() | {p for p in (self.postmaster_pid, self.localstripe_pid) if p}
        said = False
        while True:
            before = cpu_snapshot()
            time.sleep(1.0)
            foreign = foreign_cpu(before, cpu_snapshot(), roots)
            if foreign["seconds"] <= BUSY_SHARE or time.monotonic() >= deadline:
                if said:
                    _say(
                        f"    ... {'quiet now' if foreign['seconds'] <= BUSY_SHARE else 'still busy: measuring anyway'}"
                    )
                return
            if not said:
                _say(f"    waiting up to {self.args.quiet_wait:g} s for other programs to finish ({foreign['top']})")
                said = True

    @staticmethod
    def busy_note(foreign: dict, seconds: float) -> str:
        if foreign["seconds"] <= BUSY_SHARE * max(seconds, 1.0):
            return ""
        return (
            f"      BUSY: other programs used {foreign['seconds']:.1f} CPU-s during this {seconds:.1f} s measurement "
            f"({os.cpu_count()} CPUs): {foreign['top']}"
        )

    def step(self, step: str, server, db: str, spec: dict, timeout: float) -> dict:
        return run_step(step, self.env(server.url(db)), spec, timeout=self.deadline.timeout(timeout), log=self.log)

    def check(self, ok: bool, what: str) -> bool:
        if not ok:
            self.failures.append(what)
            _say(f"    CHECK FAILED: {what}")
        return ok

    # -- set-up
    def template(self, server) -> None:
        """One migrated + seeded-tiers database per server; every measured database is a copy of it."""
        server.create("template")
        result = self.step("migrate", server, "template", {}, timeout=300)
        self.templates[server.name] = result["seconds"]
        _say(f"  {server.name}: migrate + seed_tiers {result['seconds']:.1f} s (a template copied per measurement)")

    def stripe_customers(self, sqlite) -> None:
        n = self.args.payments
        out = self.tmp / "customers.json"
        _say(f"  localstripe: creating {n:,} customers, pm_card_visa attached as default (through the gateway) ...")
        result = run_step(
            "customers",
            self.env(sqlite.url("template")),
            {"n": n, "out": str(out)},
            timeout=self.deadline.timeout(60 + 0.5 * n),
            log=self.log,
        )
        result["file"] = str(out)
        self.customers = result
        _say(
            f"  localstripe set-up: {n:,} customers + cards in {result['seconds']:.1f} s "
            f"({1000 * result['seconds'] / n:.1f} ms per customer, {result['requests'] // n} requests each): "
            "not part of the measured pass"
        )

    # -- measurements
    def local_part(self, server, n: int, *, profile: bool = False, planner: str = "sql", concurrency: int = 1) -> dict:
        name = f"close_{n}_{planner}{concurrency}" + ("_profile" if profile else "")
        server.create(name, template="template")
        try:
            seeded = self.step("seed", server, name, {"n": n, "now": NOW.isoformat()}, timeout=120 + n / 500)
            spec = {"now": NOW.isoformat(), "profile": profile, "top": self.args.profile_top, "planner": planner}
            spec["concurrency"] = concurrency
            self.wait_quiet()
            closed = self.step("close", server, name, spec, timeout=120 + n / 200)
        finally:
            server.drop(name)
        server.version = closed.get("server_version") or server.version
        planner = closed.get("planner", planner)
        row = {"server": server.name, "n": n, "seed": seeded, "close": closed, "planner": planner}
        row["concurrency"] = closed.get("concurrency", 1) if planner == "sql" else 1
        if not profile:
            self.local.append(row)
            self.print_local(row)
            self.check_local(row)
        return row

    def payment_part(self, server, concurrency: int = 1) -> dict:
        n = self.args.payments
        name = f"pay_{concurrency}"
        server.create(name, template="template")
        try:
            seeded = self.step(
                "seed",
                server,
                name,
                {"n": n, "now": NOW.isoformat(), "customers": self.customers["file"]},
                timeout=120,
            )
            self.wait_quiet()
            paid = self.step(
                "pay", server, name, {"now": NOW.isoformat(), "concurrency": concurrency}, timeout=120 + 0.5 * n
            )
        finally:
            server.drop(name)
        row = {"server": server.name, "n": n, "seed": seeded, "pay": paid, "customers": self.customers}
        self.payments.append(row)
        self.print_payment(row)
        self.check_payment(row)
        return row

    # -- checks
    def check_local(self, row: dict) -> None:
        close, expected = row["close"], row["seed"]["expected"]
        before, after, again = close["before"], close["after"], close["again"]
        label = f"{row['server']} {row['n']:,}"
        self.check(before["due"] == row["n"], f"{label}: {before['due']} due before the pass, not {row['n']}")
        self.check(after["due"] == 0, f"{label}: {after['due']} subscriptions still due after the pass")
        self.check(
            after["invoices"] - before["invoices"] == expected["invoices"] == close["result"]["invoices_created"],
            f"{label}: {after['invoices'] - before['invoices']} invoices, expected {expected['invoices']}",
        )
        self.check(
            after["lines"] - before["lines"] == expected["lines"]
            and after["overage_lines"] - before["overage_lines"] == expected["overage_lines"],
            f"{label}: {after['lines']} lines ({after['overage_lines']} overage), expected {expected['lines']} "
            f"({expected['overage_lines']})",
        )
        self.check(
            after["invoiced_cents"] - before["invoiced_cents"] == expected["cents"],
            f"{label}: invoiced {after['invoiced_cents']} cents, expected {expected['cents']}",
        )
        result2 = again["result"]
        self.check(
            result2["periods_closed"] == 0 and result2["invoices_created"] == 0 and again["after"] == after,
            f"{label}: the second pass changed something: {result2}, {again['after']} vs {after}",
        )

    def check_payment(self, row: dict) -> None:
        pay, n = row["pay"], row["n"]
        label = f"{row['server']} payments"
        charge, again = pay["charge"]["result"], pay["again"]["result"]
        self.check(pay["local"]["result"]["invoices_created"] == n, f"{label}: {pay['local']['result']} invoices")
        self.check(
            charge["payments_attempted"] == charge["payments_succeeded"] == n and not charge["errors"],
            f"{label}: {charge}",
        )
        self.check(pay["after"]["invoices_paid"] == n, f"{label}: {pay['after']['invoices_paid']} invoices paid")
        self.check(
            pay["intents"]["after"] - pay["intents"]["before"] == n,
            f"{label}: {pay['intents']['after'] - pay['intents']['before']} PaymentIntents created in localstripe",
        )
        self.check(
            again["periods_closed"] == again["invoices_created"] == again["payments_attempted"] == 0
            and pay["again"]["after"] == pay["after"]
            and pay["intents"]["after_again"] == pay["intents"]["after"],
            f"{label}: the second pass changed something: {again}",
        )

    # -- output
    @staticmethod
    def _statements(stmts: dict) -> str:
        """Statements by kind (verb + table, from the SQL text): count x, seconds inside the database."""
        kinds = sorted(stmts["kinds"].items(), key=lambda kv: -kv[1]["seconds"])
        return "; ".join(f"{kind} x{info['count']} {info['seconds']:.2f}s" for kind, info in kinds)

    def print_local(self, row: dict) -> None:
        close, n = row["close"], row["n"]
        result, stmts = close["result"], close["statements"]
        batches = max(result["batches"], 1)
        secs = close["seconds"]
        goal = ""
        if _is_goal_row(row, self.args.close_concurrency):
            goal = f"  goal < {GOAL_SECONDS:g} s: {'met' if secs < GOAL_SECONDS else 'MISSED'}"
        cpu = close.get("cpu", {})
        cpu_text = f"CPU {1e6 * _cpu(close) / n:.0f} µs/sub: client {1e6 * cpu.get('client', 0) / n:.0f}" + (
            f" + database server {1e6 * cpu['database'] / n:.0f} ({cpu.get('backends', 1)} backend(s))"
            if "database" in cpu
            else ""
        )
        many = "several connections: statements and their times summed over them; " if row["concurrency"] > 1 else ""
        _say(
            f"  {row['server']:<10} {_label(row):<6} {n:>9,} subs  {secs:7.2f} s  {1e6 * secs / n:6.0f} µs/sub  "
            f"({cpu_text})   "
            f"{result['invoices_created']:,} invoices, {close['after']['lines'] - close['before']['lines']:,} lines, "
            f"{result['batches']} batches of ≤{close['batch_size']:,}; {many}{stmts['count']} statements "
            f"({stmts['count'] / batches:.1f}/batch), {stmts['seconds']:.2f} s inside statements, "
            + (f"{secs - stmts['seconds']:.2f} s elsewhere" if not many else "")
            + f"  [seed {row['seed']['seconds']:.1f} s]{goal}"
        )
        _say(f"      statements: {self._statements(stmts)}")
        if note := self.busy_note(close["foreign_cpu"], secs):
            _say(note)
        again = close["again"]
        a_stmts = again["statements"]
        _say(
            f"      again: {again['seconds'] * 1000:.0f} ms, {again['result']['periods_closed']} periods closed, "
            f"{again['result']['invoices_created']} invoices, {a_stmts['count']} statements; rows "
            f"invoices {again['after']['invoices']:,} lines {again['after']['lines']:,} "
            f"payments {again['after']['payments']:,} audit {again['after']['audit']:,} due {again['after']['due']} "
            f"({'unchanged' if again['after'] == close['after'] else 'CHANGED'})"
        )

    def print_payment(self, row: dict) -> None:
        pay, n = row["pay"], row["n"]
        local, charge, again = pay["local"], pay["charge"], pay["again"]
        total = local["seconds"] + charge["seconds"]
        cr = charge["result"]
        _say(
            f"  {row['server']:<10} {n:>6,} subs, {pay.get('concurrency', 1)} at a time: "
            f"{n / charge['seconds']:.0f} payments/s; whole pass {total:6.2f} s = {1000 * total / n:5.1f} ms/sub:  "
            f"local close {local['seconds']:.2f} s ({local['statements']['count']} statements), "
            f"charging {charge['seconds']:.2f} s = {1000 * charge['seconds'] / n:.1f} ms/sub "
            f"({cr['payments_succeeded']:,} succeeded, {cr['payments_failed']} failed, "
            f"{len(cr['errors'])} errors; {charge['statements']['count'] / n:.1f} statements/sub, "
            f"{1000 * charge['statements']['seconds'] / n:.1f} ms/sub in the database; {pay['emails']:,} receipts)"
        )
        _say(f"      charging statements: {self._statements(charge['statements'])}")
        if note := self.busy_note(pay["foreign_cpu"], charge["seconds"]):
            _say(note)
        for name, times in sorted(pay["stripe_calls"].items()):
            tenth = max(len(times) // 10, 1)
            _say(
                f"      Stripe calls: {name} x{len(times):,} {sum(times):.2f} s = {1000 * sum(times) / n:.1f} ms/sub "
                f"(first {tenth:,}: {1000 * sum(times[:tenth]) / tenth:.1f} ms each, last {tenth:,}: "
                f"{1000 * sum(times[-tenth:]) / tenth:.1f} ms each); the rest of the charge, our own work: "
                f"{1000 * (charge['seconds'] - sum(times)) / n:.1f} ms/sub"
            )
        ar = again["result"]
        _say(
            f"      again (billing_run): {again['seconds'] * 1000:.0f} ms, {ar['periods_closed']} periods closed, "
            f"{ar['invoices_created']} invoices, {ar['payments_attempted']} payments, "
            f"{again['statements']['count']} statements; rows invoices {again['after']['invoices']:,} "
            f"(paid {again['after']['invoices_paid']:,}) payments {again['after']['payments']:,} "
            f"({'unchanged' if again['after'] == pay['after'] else 'CHANGED'}); PaymentIntents in localstripe "
            f"{pay['intents']['before']:,} -> {pay['intents']['after']:,} -> {pay['intents']['after_again']:,}"
        )

    def print_profile(self, row: dict) -> None:
        close = row["close"]
        _say(
            f"\nProfile: {row['server']} {row['n']:,} subscriptions under cProfile, {close['seconds']:.2f} s "
            "(cProfile inflates Python-heavy code: read shares, not absolute times)"
        )
        for key in ("tottime", "cumulative"):
            _say(f"  top by {key}:")
            for line in close["profile"][key].splitlines():
                _say(f"    {line}")
        if close["profile"].get("database"):
            _say("  the database side (billing/close_pg.py), first batch under EXPLAIN (ANALYZE, WAL), rolled back:")
            for line in close["profile"]["database"].splitlines():
                _say(f"    {line}")


def _cpu(close: dict) -> float:
    """CPU seconds of a close: the client's and the database backends' serving it."""
    return close.get("cpu", {}).get("client", 0) + close.get("cpu", {}).get("database", 0)


def _label(row: dict) -> str:
    """python, sql (one connection) or sql-N (N connections at once)."""
    if row["planner"] != "sql" or row.get("concurrency", 1) == 1:
        return row["planner"]
    return f"sql-{row['concurrency']}"


def _is_goal_row(row: dict, concurrency: int) -> bool:
    """The goal is measured as a billing pass runs it: set-based, TIERLAB_CLOSE_CONCURRENCY connections."""
    return (
        row["server"] == "PostgreSQL"
        and row["n"] == GOAL_SUBSCRIPTIONS
        and row["planner"] == "sql"
        and row.get("concurrency", 1) == concurrency
    )


def _summary(bench: Bench) -> None:
    _say("\nSummary")
    for row in bench.local:
        close = row["close"]
        batches = max(close["result"]["batches"], 1)
        _say(
            f"  local   {row['server']:<10} {_label(row):<6} {row['n']:>9,} subs: {close['seconds']:6.2f} s, "
            f"{1e6 * close['seconds'] / row['n']:5.0f} µs/sub (CPU {1e6 * _cpu(close) / row['n']:.0f} µs/sub, "
            f"client + database server), {close['statements']['count'] / batches:.1f} "
            f"statements/batch; again: {close['again']['result']['invoices_created']} invoices"
            + (" [BUSY machine]" if Bench.busy_note(close["foreign_cpu"], close["seconds"]) else "")
        )
    # Before/after, back to back on copies of one seed: each set-based run against the Python planner,
    # and the pool against one connection.
    for (server, n), python in {(r["server"], r["n"]): r for r in bench.local if r["planner"] == "python"}.items():
        runs = [r for r in bench.local if (r["server"], r["n"], r["planner"]) == (server, n, "sql")]
        single = next((r for r in runs if r["concurrency"] == 1), None)
        for row in runs:
            bases = [python] + ([single] if single is not None and row is not single else [])
            for base in bases:
                before, after = base["close"], row["close"]
                _say(
                    f"  before/after {server} {n:,}: {_label(base)} {1e6 * before['seconds'] / n:.0f} µs/sub "
                    f"(CPU {1e6 * _cpu(before) / n:.0f}) -> {_label(row)} {1e6 * after['seconds'] / n:.0f} µs/sub "
                    f"(CPU {1e6 * _cpu(after) / n:.0f}): {before['seconds'] / after['seconds']:.2f}x faster, "
                    f"{_cpu(before) / max(_cpu(after), 1e-9):.2f}x less CPU"
                )
    for row in bench.payments:
        pay = row["pay"]
        _say(
            f"  payment {row['server']:<10} {row['n']:>9,} subs, {pay.get('concurrency', 1)} at a time: "
            f"{row['n'] / pay['charge']['seconds']:.0f} payments/s; charging {pay['charge']['seconds']:6.2f} s, "
            f"{1000 * pay['charge']['seconds'] / row['n']:.1f} ms/sub (+ local close {pay['local']['seconds']:.2f} s); "
            f"again: {pay['again']['result']['invoices_created']} invoices, "
            f"{pay['again']['result']['payments_attempted']} payments; Stripe set-up (not in the pass) "
            f"{row['customers']['seconds']:.1f} s"
            + (" [BUSY machine]" if Bench.busy_note(pay["foreign_cpu"], pay["charge"]["seconds"]) else "")
        )
    pools = {r["pay"].get("concurrency", 1): r for r in bench.payments if r["server"] == "PostgreSQL"}
    if 1 in pools and len(pools) > 1:
        single = pools[1]["n"] / pools[1]["pay"]["charge"]["seconds"]
        for concurrency, row in sorted(pools.items()):
            if concurrency != 1:
                rate = row["n"] / row["pay"]["charge"]["seconds"]
                _say(
                    f"  payments: pool of {concurrency} {rate:.0f}/s vs one at a time {single:.0f}/s: "
                    f"{rate / single:.2f}x"
                )
    goal_rows = [r for r in bench.local if _is_goal_row(r, bench.args.close_concurrency)]
    for row in goal_rows:
        secs = row["close"]["seconds"]
        _say(
            f"  goal: {GOAL_SUBSCRIPTIONS:,} on PostgreSQL in < {GOAL_SECONDS:g} s: {secs:.2f} s, "
            f"{'met' if secs < GOAL_SECONDS else 'MISSED'}"
        )
    _say(f"  checks: {'all passed' if not bench.failures else f'{len(bench.failures)} FAILED'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI check: 1,000 and 6,000 local, 100 payments, a profile smoke, no waiting for quiet",
    )
    parser.add_argument("--skip-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--skip-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument("--database-url", help="an existing PostgreSQL server to create the bench's databases on")
    parser.add_argument("--sizes", help="local-part sizes, comma-separated (default 10000,100000)")
    parser.add_argument(
        "--sqlite-sizes",
        help="local-part sizes on SQLite (default 10000; --quick: 1000,6000, or 1000 with PostgreSQL). 100000\n"
        "takes minutes on SQLite\n"
        "while invoice numbering there is quadratic per batch (see the module docstring)",
    )
    parser.add_argument("--skip-payments", action="store_true", help="the local part only (no localstripe)")
    parser.add_argument("--payments", type=int, help="subscriptions charged through localstripe (default 1000)")
    parser.add_argument(
        "--payment-concurrency",
        type=int,
        default=8,
        help="the pool's size for the second payment run on PostgreSQL (the first charges one at a time;\n"
        "SQLite charges one at a time only). Default 8, TIERLAB_PAYMENT_CONCURRENCY's default",
    )
    parser.add_argument(
        "--no-compare",
        action="store_true",
        help="PostgreSQL: do not also close each size with the Python planner and with the set-based close on\n"
        "one connection (the before/after comparisons)",
    )
    parser.add_argument(
        "--close-concurrency",
        type=int,
        default=int(os.environ.get("TIERLAB_CLOSE_CONCURRENCY") or 2),
        help="PostgreSQL: batches of the set-based close closed at once, each on its own connection (default:\n"
        "TIERLAB_CLOSE_CONCURRENCY, else its default 2); the goal is read on this run. Above 1, each size\n"
        "is also closed on one connection, back to back (unless --no-compare)",
    )
    parser.add_argument("--profile", action="store_true", help="profile the largest PostgreSQL close even if on goal")
    parser.add_argument("--no-profile", action="store_true", help="never profile")
    parser.add_argument("--profile-top", type=int, default=25, help="functions shown per profile listing")
    parser.add_argument("--max-seconds", type=float, default=1200, help="the whole run's time budget")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="before each measurement, wait up to this many seconds for other programs to stop using the CPUs\n"
        "(default 20; --quick: 0)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, SQLite files)")
    parser.add_argument("--fail-on-miss", action="store_true", help="exit 1 if the goal is missed")
    args = parser.parse_args(argv)
    if args.skip_postgres and args.skip_sqlite:
        parser.error("--skip-postgres and --skip-sqlite leave nothing to measure")
    # --quick: 6,000 is two batches of CLOSE_BATCH_SIZE (5,000), the second one partial.
    sizes = [int(s) for s in (args.sizes or ("1000,6000" if args.quick else "10000,100000")).split(",")]
    # --quick on SQLite: 10,000 too only when it is the one database (with PostgreSQL, SQLite's 1,000 is a smoke).
    quick_sqlite = "1000,6000" if args.skip_postgres else "1000"
    sqlite_sizes = [int(s) for s in (args.sqlite_sizes or (quick_sqlite if args.quick else "10000")).split(",")]
    args.payments = args.payments or (100 if args.quick else 1000)
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 20.0
    if args.quick:
        args.profile_top = min(args.profile_top, 10)

    if not PYTHON.exists():
        _say(f"{PYTHON} not found: create the virtualenv first (make setup).")
        return 2
    if not args.skip_postgres and not args.database_url and PostgresServer.find_bin() is None:
        _say("PostgreSQL not found: apt-get install -y postgresql, or pass --database-url / --skip-postgres.")
        return 2

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    atexit.register(_cleanup_all)
    tmp = Path(tempfile.mkdtemp(prefix="tierlab-bench-billing-"))
    started = time.monotonic()
    bench = Bench(args, tmp)
    try:
        _say(
            f"TierLab billing pass bench: clock {NOW:%Y-%m-%d %H:%M} UTC, python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs; temp dir {tmp}"
        )
        sqlite = SqliteServer(tmp)
        servers: list = []
        if not args.skip_postgres:
            _say("  starting PostgreSQL ..." if not args.database_url else "  connecting to PostgreSQL ...")
            servers.append(PostgresServer(tmp, bench.deadline, args.database_url))
            bench.postmaster_pid = servers[-1].postmaster_pid()
        if not args.skip_sqlite:
            servers.append(sqlite)
        for server in servers:
            bench.template(server)

        _say("\nLocal part: billing_periods_close(now=...), all subscriptions due at once")
        for server in servers:
            for n in sqlite_sizes if server is sqlite else sizes:
                if server is not sqlite and not args.no_compare:
                    # Before/after back to back, on fresh copies of the same seed: the Python planner
                    # (PostgreSQL's close before issue 17, SQLite's now), then the set-based statement.
                    bench.local_part(server, n, planner="python")
                    if args.close_concurrency > 1:
                        bench.local_part(server, n, concurrency=1)  # the set-based close on one connection
                bench.local_part(server, n, concurrency=1 if server is sqlite else args.close_concurrency)
        for server in servers:
            _say(f"  [{server.describe()}]")

        pg_rows = [r for r in bench.local if r["server"] == "PostgreSQL" and r["planner"] == "sql"]
        biggest = max(pg_rows, key=lambda r: r["n"]) if pg_rows else None
        missed = any(_is_goal_row(r, args.close_concurrency) and r["close"]["seconds"] >= GOAL_SECONDS for r in pg_rows)
        if biggest is not None and not args.no_profile and (missed or args.profile):
            _say(
                f"\n{'Goal missed' if missed else 'Profile (--profile)'}: "
                "the close again on a fresh copy under cProfile"
            )
            bench.profile = bench.local_part(servers[0], biggest["n"], profile=True)
            bench.print_profile(bench.profile)
        elif args.quick and not args.no_profile:
            # A smoke of the profiled close (the step's cProfile path), on the smallest size.
            smallest = min(bench.local, key=lambda r: r["n"])
            server = next(s for s in servers if s.name == smallest["server"])
            _say(f"\nProfile smoke (--quick): the {smallest['n']:,} close on {server.name} again under cProfile")
            bench.profile = bench.local_part(server, smallest["n"], profile=True)
            bench.check(
                bool(bench.profile["close"].get("profile", {}).get("tottime")), "the profiled close printed no profile"
            )
            bench.print_profile(bench.profile)

        if not args.skip_payments:
            _say(
                f"\nPayment part: billing_run(now=...) charging {args.payments:,} renewal invoices through localstripe"
            )
            proc, bench.stripe_base = start_localstripe(bench.env(sqlite.url("template")), tmp / "localstripe.log")
            bench.localstripe_pid = proc.pid
            _say(f"  localstripe on {bench.stripe_base} (memory state, no webhooks)")
            for server in servers:
                pools = [1] if server is sqlite else [1, args.payment_concurrency]
                for concurrency in pools:
                    # Each run starts from an empty localstripe with its own customers: its request
                    # times grow with what it stores (measured: see the "first/last" figures).
                    _localstripe_delete(bench.stripe_base, "/_config/data", timeout=30)
                    bench.stripe_customers(sqlite)
                    bench.payment_part(server, concurrency)
            _stop(proc)

        _summary(bench)
        goal_missed = any(
            r["close"]["seconds"] >= GOAL_SECONDS for r in bench.local if _is_goal_row(r, args.close_concurrency)
        )
        _say(
            f"\ntotal time {time.monotonic() - started:.0f} s; "
            f"{'kept ' + str(tmp) if args.keep else 'temporary files removed'}"
        )
        if bench.failures:
            return 1
        return 1 if (args.fail_on_miss and goal_missed) else 0
    except SystemExit as stop:
        if stop.code not in (0, None):
            _say(f"interrupted (exit {stop.code}): stopping children, removing {tmp}")
        raise
    except (RuntimeError, OSError, KeyError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", "") or ""
        _say(f"benchmark failed: {error}\n{detail}".rstrip())
        _say(f"logs in {tmp}")
        args.keep = True
        return 1
    finally:
        _cleanup_all()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
