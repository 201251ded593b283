#!/usr/bin/env python3
"""How fast the simulator runs a business forward: team-days per second.

Writes a scenario of --teams teams, all signed up on the first day (80% hobbyists on Free, 12%
creators on Plus with a trial, 7% startups on Pro, 1% enterprises), one hosting partner, one
licensee above the licence threshold and a model release in February, for --months months, and
runs it the way `manage.py simulate` does (simulation/runner.py: its own process and SQLite
database, the simulated processor), in one process. Prints the team-days simulated, the time,
team-days per second and where the time went. With --workers N it runs the same scenario again in N
shards on Celery workers the bench starts (its own broker folder, or the broker in CELERY_BROKER_URL,
e.g. Redis; the shards' bookkeeping in a scratch database of the bench's own), and prints the speed-up.

The aggregation the simulator uses (simulation/population.py): the tier's limits applied to each
team's requests of a day in aggregate, one usage record per team and week at most; sign-ups,
checkouts, renewals, dunning, partner reports, statements and licences go through TierLab's own
services one by one.

Checks (a failed one exits 1): the run's months are the scenario's, every month's total is the sum of
its channels, every channel that the population drives earned something, a team-day was simulated for
every team and day but those of teams that left; with --workers, the sharded run's summary.json is
byte for byte the single-process run's.

Goal (the issue): 10,000 teams x 12 months in under 5 minutes on this 2-core machine, single process.

    .venv/bin/python bench/simulate.py                         # 10,000 teams x 12 months, one process
    .venv/bin/python bench/simulate.py --workers 2             # and again in 2 shards on 2 Celery workers
    .venv/bin/python bench/simulate.py --quick                 # CI: 120 teams x 2 months, 1 and 2 shards
    .venv/bin/python bench/simulate.py --quick --database-url postgres://u:p@127.0.0.1:5432/postgres

With --database-url the shards' databases (and the bench's scratch database) are made on that
PostgreSQL server and dropped at the end (the role needs CREATEDB). Exit status 0 when it ran and its
checks held (goal met or not; --fail-on-miss makes a missed goal exit 1), 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._pg import is_postgres, scratch_database  # noqa: E402 - stdlib only until called

GOAL_SECONDS = 300.0
GOAL_TEAMS, GOAL_MONTHS = 10_000, 12
# Shares of the population, by segment.
MIX = {"hobbyists": 0.80, "creators": 0.12, "startups": 0.07, "enterprises": 0.01}


def scenario_text(*, teams: int, months: int) -> str:
    counts = {name: int(teams * share) for name, share in MIX.items()}
    counts["hobbyists"] += teams - sum(counts.values())
    return f"""
[scenario]
name = "bench-{teams}x{months}"
start = 2026-01-01
months = {months}

[[catalog.models]]
model_id = "Llama-5-Bench"
released_on = 2026-02-10
tiers = ["pro", "enterprise"]

[[segments]]
name = "hobbyists"
initial_teams = {counts["hobbyists"]}
[segments.traffic]
requests_per_day = 25
tokens_per_request = 900
growth_per_month = 0.05
weekend_factor = 1.3
active_hours = 4
daily_variation = 0.4
team_variation = 0.8
[segments.behaviour]
ladder = ["free", "plus"]
upgrade_when_refused = 0.01
churn_per_month = 0.04
price_elasticity = 1.5

[[segments]]
name = "creators"
start_tier = "plus"
initial_teams = {counts["creators"]}
failing_card_share = 0.02
[segments.traffic]
requests_per_day = 250
tokens_per_request = 1200
daily_variation = 0.3
[segments.behaviour]
churn_per_month = 0.04
card_failure_per_month = 0.01
fix_card_in_dunning = 0.25
trial_conversion = 0.8

[[segments]]
name = "startups"
start_tier = "pro"
initial_teams = {counts["startups"]}
[segments.traffic]
requests_per_day = 6000
tokens_per_request = 1500
growth_per_month = 0.06
daily_variation = 0.25
[segments.behaviour]
churn_per_month = 0.02
spend_cap_share = 0.3
spend_cap_multiple = 3.0

[[segments]]
name = "enterprises"
start_tier = "enterprise"
initial_teams = {counts["enterprises"]}
[segments.traffic]
requests_per_day = 150000
tokens_per_request = 2000

[[partners]]
slug = "nimbus"
name = "Nimbus Cloud"
share_bps = 1500
customers = 25
tokens_per_customer_per_day = 20_000_000
price_cents_per_million_tokens = 90
daily_variation = 0.2

[[licensees]]
name = "socialverse"
mau_start = 710_000_000
mau_growth_per_month = 0.03
request_after_days = 1
grant_after_days = 3
monthly_fee_cents = 2_500_000
"""


def _say(message: str = "") -> None:
    print(message, flush=True)


@contextlib.contextmanager
def celery_workers(count: int, env: dict[str, str], logs: Path):
    """``count`` Celery workers (one process each: --pool solo), stopped (TERM, then KILL) at the end."""
    processes = []
    try:
        for index in range(count):
            log = (logs / f"worker-{index}.log").open("wb")
            processes.append(
                (
                    subprocess.Popen(
                        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo",
                         "--loglevel", "WARNING", "--hostname", f"bench-{index}-{uuid.uuid4().hex[:6]}@%h",
                         "--without-gossip", "--without-mingle", "--without-heartbeat"],
                        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    ),
                    log,
                )
            )  # fmt: skip
        yield [process for process, _ in processes]
    finally:
        for process, log in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
            log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teams", type=int, default=GOAL_TEAMS)
    parser.add_argument("--months", type=int, default=GOAL_MONTHS)
    parser.add_argument("--workers", type=int, default=1, help="also run in this many shards on Celery workers")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default="", help="a PostgreSQL server for the databases (CREATEDB)")
    parser.add_argument("--quick", action="store_true", help="CI check: 120 teams x 2 months, 1 and 2 shards")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and databases")
    parser.add_argument("--fail-on-miss", action="store_true", help="exit 1 if the goal is missed, too")
    args = parser.parse_args(argv)
    if args.quick:
        args.teams, args.months, args.workers = 120, 2, max(args.workers, 2)
    if args.database_url and not is_postgres(args.database_url):
        parser.error("--database-url must name a PostgreSQL server (postgres://...)")

    tmp = Path(tempfile.mkdtemp(prefix="tierlab-bench-simulate-"))
    drops = []
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # cleanup runs on TERM too
    try:
        # The bench's own scratch database for the runs' bookkeeping (the Celery shards report there) and
        # its own broker folder, unless a broker URL is given (CI's Redis); set before Django starts.
        if args.database_url:
            platform_url, drop = scratch_database(args.database_url, "simbench")
            drops.append(drop)
        else:
            platform_url = f"sqlite:///{tmp / 'platform.sqlite3'}"
        os.environ.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            DATABASE_URL=platform_url,
            DEBUG="0",
            CACHE_URL="locmemcache://",
            TIERLAB_PRODUCTION="0",
            CELERY_BROKER_DIR=str(tmp / "broker"),
        )
        return _run(args, tmp)
    finally:
        for drop in drops:
            drop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, tmp: Path) -> int:
    import django

    django.setup()
    from django.core.management import call_command

    from simulation import runner
    from simulation.results import CHANNELS, summary_json
    from simulation.scenario import scenario_parse

    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            failures.append(what)
            _say(f"  CHECK FAILED: {what}")

    scenario = scenario_parse(scenario_text(teams=args.teams, months=args.months), default_name="bench")
    days = (scenario.end - scenario.start).days
    server = args.database_url or None
    where = "PostgreSQL" if server else "SQLite"
    _say(f"simulate bench: {args.teams:,} teams x {args.months} months ({days} days), seed {args.seed}, {where}")
    single = runner.run_scenario(scenario=scenario, seed=args.seed, keep_work=args.keep, server_url=server)
    speed = single.team_days / single.seconds
    _say(
        f"  1 process: {single.team_days:,} team-days in {single.seconds:.1f} s = {speed:,.0f} team-days/s "
        f"({single.charges:,} charges; the shard's process used {single.cpu_seconds:.1f} s of CPU)"
    )
    phases = sorted(single.seconds_by_phase.items(), key=lambda item: -item[1])
    _say("  where the time went: " + ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in phases))
    summary = single.summary
    check([m["month"] for m in summary["months"]] == scenario.month_names, "the run's months are the scenario's")
    check(all(m["total_cents"] == sum(m["revenue_cents"].values()) for m in summary["months"]), "totals add up")
    for channel in ("subscriptions", "overage", "partner_share", "licences"):
        check(summary["totals"]["revenue_cents"][channel] > 0, f"{channel} earned something")
    left = single.diagnostics.get("decided: cancel", 0)
    check(args.teams * days - left * days <= single.team_days <= args.teams * days, "a team-day per team and day")

    if args.workers > 1:
        call_command("migrate", verbosity=0)
        env = dict(os.environ)
        if not str(env.get("CELERY_BROKER_URL", "filesystem://")).startswith("filesystem://"):
            from config.celery import app

            app.control.purge()  # a shared broker: nothing queued before this run reaches the bench's workers
        logs = tmp / "logs"
        logs.mkdir(exist_ok=True)
        with celery_workers(args.workers, env, logs):
            sharded = runner.run_scenario_on_workers(
                scenario=scenario, seed=args.seed, shards=args.workers, keep_work=args.keep, server_url=server
            )
        _say(
            f"  {args.workers} shards on {args.workers} Celery workers: {sharded.team_days:,} team-days in "
            f"{sharded.seconds:.1f} s = {sharded.team_days / sharded.seconds:,.0f} team-days/s, "
            f"speed-up {single.seconds / sharded.seconds:.2f}x"
        )
        check(summary_json(sharded.summary) == summary_json(summary), "the shards' summary.json is the single run's")

    totals = summary["totals"]["revenue_cents"]
    _say("  revenue: " + ", ".join(f"{channel} {totals[channel] / 100:,.2f}" for channel in CHANNELS))
    goal_run = args.teams >= GOAL_TEAMS and args.months >= GOAL_MONTHS
    if goal_run:
        met = single.seconds < GOAL_SECONDS
        _say(f"  goal {GOAL_TEAMS:,} teams x {GOAL_MONTHS} months < {GOAL_SECONDS:.0f} s: {'met' if met else 'MISSED'}")
        if not met and args.fail_on_miss:
            failures.append("goal missed")
    if failures:
        _say(f"FAILED: {'; '.join(failures)}")
        return 1
    _say("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
