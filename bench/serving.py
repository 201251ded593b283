#!/usr/bin/env python3
"""Which WSGI server configuration serves the metered model API best (issue 17), measured in one run.

Serves ``POST /v1/chat/completions`` (metered, Redis quota backend, one key per configuration) under
each configuration and drives it with wrk at each connection count:

  gunicorn-sync      gunicorn, 2 sync workers
  gunicorn-gthread   gunicorn, 2 gthread workers x 4 threads
  granian            granian --interface wsgi, 2 workers
  procfile           the Procfile's ``web:`` line itself (whatever it says, its access log included), so
                     the figure of what users run is measured in the same run as the alternatives

the first three each without and with an access log (gunicorn ``--access-logfile``, granian
``--access-log``; to a file in the temporary directory), at 8 and 64 connections. Every server is up for
the whole run and the configurations take turns within each round (the order rotates from round to
round), so on a shared machine each sees the same share of the noise. Prints the median req/s, p50 and
p99 per configuration, the server's CPU per request (master and workers, from /proc), each as a
ratio to the best of its connection count, and says which server the Procfile runs and whether that
is the best (within ``--tolerance``).

Checks: every response is 200 and the server recorded every request it admitted (records == the
server's 200s, after draining the usage stream as the Celery task does), for every configuration.

    .venv/bin/python bench/serving.py                 # 3 rounds x 4 s per configuration and connection count
    .venv/bin/python bench/serving.py --quick         # 1 round x 1 s, without the access-log variants: CI
    .venv/bin/python bench/serving.py --database-url postgres://u:p@127.0.0.1/postgres

Needs redis-server and wrk (exit 2 without them). Self-contained and self-stopping like
bench/api_overhead.py, whose helpers it uses.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import api_overhead as ao  # noqa: E402
from bench._procfile import procfile_web, web_command  # noqa: E402
from bench.partner_ingest import _tree_cpu_seconds  # noqa: E402

VENV_BIN = ao.PYTHON.parent


@dataclass(frozen=True)
class Server:
    name: str
    access_log: bool

    @property
    def label(self) -> str:
        return f"{self.name}{' +access log' if self.access_log else ''}"


def procfile_server() -> str:
    """Which of the measured servers the Procfile's web line runs."""
    web = procfile_web()
    if "granian" in web:
        return "granian"
    if "gunicorn" in web:
        return "gunicorn-gthread" if re.search(r"--threads\s+([2-9]|\d\d)", web) else "gunicorn-sync"
    return "?"


def command(server: Server, port: int, tmp: Path) -> list[str]:
    log = str(tmp / f"access-{server.name}.log")
    if server.name == "procfile":
        # As honcho runs it: through the shell (``${TIERLAB_VAR_DIR:-var}``, set to the run's own folder).
        return web_command(port=port, venv_bin=VENV_BIN)
    if server.name.startswith("gunicorn"):
        cmd = [str(VENV_BIN / "gunicorn"), "config.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
        cmd += ["--threads", "4"] if server.name == "gunicorn-gthread" else ["--worker-class", "sync"]
        cmd += ["--log-level", "warning"]
        return cmd + (["--access-logfile", log] if server.access_log else [])
    cmd = [str(VENV_BIN / "granian"), "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "2", "--log-level", "warning", "config.wsgi:application"]
    if server.name.startswith("granian-t"):  # --blocking-threads: granian's default for WSGI is 256 per worker
        cmd += ["--blocking-threads", server.name.removeprefix("granian-t")]
    return cmd + (["--access-log"] if server.access_log else ["--no-access-log"])


def start(server: Server, env: dict, tmp: Path, secret: str):
    port = ao._free_port()
    out = open(tmp / f"server-{server.label.replace(' ', '_')}.out", "ab")  # noqa: SIM115 - closed with the process
    proc = ao._spawn(command(server, port, tmp), cwd=ROOT, env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{server.label} exited ({proc.returncode}); see {out.name}")
        if ao._post_ok(port, secret) == 200:
            return proc, port
        time.sleep(0.2)
    raise RuntimeError(f"{server.label} not ready within 90 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per configuration, count and round")
    parser.add_argument("--connections", default="8,64", help="comma-separated wrk connection counts")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--tolerance", type=float, default=0.05, help="within this share of the best counts as best")
    parser.add_argument(
        "--granian-threads", default="", help="also granian + access log with these --blocking-threads (e.g. 4,16)"
    )
    parser.add_argument("--database-url", default="", help="a PostgreSQL server for a scratch database")
    parser.add_argument("--quick", action="store_true", help="1 round x 1 s, no access-log variants (CI)")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("redis-server", "wrk") if shutil.which(tool) is None]
    if missing:
        print(f"bench/serving.py needs {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.quick:
        args.rounds, args.duration = 1, 1.0
    signal.signal(signal.SIGTERM, ao._on_signal)
    atexit.register(ao._stop_all)
    counts = [int(c) for c in args.connections.split(",")]
    servers = [Server(name, log) for log in ((False,) if args.quick else (False, True))
               for name in ("gunicorn-sync", "gunicorn-gthread", "granian")]  # fmt: skip
    servers += [Server(f"granian-t{int(n)}", True) for n in args.granian_threads.split(",") if n]
    servers.append(Server("procfile", False))  # the web line as written, access log included if it has one
    tmp = Path(tempfile.mkdtemp(prefix="tierlab-serving-"))
    atexit.register(shutil.rmtree, tmp, True)
    database_url, drop = f"sqlite:///{tmp / 'bench.sqlite3'}", None
    if args.database_url:
        database_url, drop = ao.scratch_database(args.database_url, "serving")
        atexit.register(drop)
    redis_proc, redis_port = ao.start_redis(tmp)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIERLAB_", "CELERY_", "BENCH_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings", DEBUG="0", LOG_LEVEL="WARNING", DATABASE_URL=database_url,
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", CELERY_BROKER_DIR=str(tmp / "celery"),
        CACHE_URL="locmemcache://", TIERLAB_PRODUCTION="0", TIERLAB_QUOTA_BACKEND="redis", PYTHONUNBUFFERED="1",
        TIERLAB_VAR_DIR=str(tmp / "var"),  # the Procfile's pid file: not the project's
    )  # fmt: skip
    if args.database_url:
        # Every server is up at once, and each thread keeps its connection (CONN_MAX_AGE): granian's
        # threads alone would pass PostgreSQL's default of 100 connections. Close them after each request.
        env["CONN_MAX_AGE"] = "0"
    (tmp / "var" / "run").mkdir(parents=True)
    labels = [s.label.replace(" ", "_").replace("+", "") for s in servers]
    setup = ao._run_django("setup", env, spec={"run_id": f"{int(time.time())}-{os.getpid()}", "keys": labels},
                           timeout=900)  # fmt: skip
    keys = setup["keys"]
    print(f"serving bench: metered {ao.ENDPOINT} (Redis backend), wrk -t{args.threads}, {args.rounds} round(s) x "
          f"{args.duration:g} s, {os.cpu_count()} CPUs; Procfile web: {procfile_web()}", flush=True)  # fmt: skip
    results: dict[tuple[str, int], list[dict]] = {}
    failed: list[str] = []
    # Every server is up for the whole run (an idle one costs nothing) and the configurations take turns
    # within each round, in an order that rotates, so each sees the same share of the machine's noise.
    running: dict[str, tuple] = {}
    try:
        for server, label in zip(servers, labels, strict=True):
            secret = keys[label]["secret"]
            lua = ao.write_lua(tmp, label, secret)
            proc, port = start(server, env, tmp, secret)
            running[server.label] = (proc, port, lua)
            ao.run_wrk(f"http://127.0.0.1:{port}{ao.ENDPOINT}", lua, seconds=1, connections=8, threads=args.threads)
        for round_ in range(args.rounds):
            order = servers[round_ % len(servers) :] + servers[: round_ % len(servers)]
            for count in counts:
                for server in order:
                    proc, port, lua = running[server.label]
                    if proc.poll() is not None:
                        raise RuntimeError(f"{server.label} exited ({proc.returncode}) during the run")
                    cpu_before = _tree_cpu_seconds(proc.pid)
                    run = ao.run_wrk(
                        f"http://127.0.0.1:{port}{ao.ENDPOINT}", lua, seconds=args.duration, connections=count,
                        threads=args.threads,
                    )  # fmt: skip
                    run["cpu_seconds"] = _tree_cpu_seconds(proc.pid) - cpu_before
                    results.setdefault((server.label, count), []).append(run)
                    if run["status"] or run["socket_errors"]:
                        failed.append(f"{server.label} at {count}: {run['status']} non-2xx, "
                                      f"{run['socket_errors']} socket errors")  # fmt: skip
            print(f"  round {round_ + 1}/{args.rounds} done", flush=True)
    finally:
        for proc, _port, _lua in running.values():
            ao._stop(proc, grace=15)
    ao._run_django("drain", env, timeout=600)
    spec = {"keys": {label: {"key_id": keys[label]["key_id"], "team_id": keys[label]["team_id"]} for label in labels},
            "redis_url": env["REDIS_URL"]}  # fmt: skip
    checks = ao._run_django("verify", env, spec=spec, timeout=600)["keys"]
    ao._stop(redis_proc, grace=5)

    print()
    print(f"{'configuration':<34} {'conns':>5} {'req/s':>9} {'p50':>9} {'p99':>9} {'CPU/req':>9} {'x best':>7}")
    best_by_count = {}
    for count in counts:
        medians = {s.label: statistics.median(r["rps"] for r in results[(s.label, count)]) for s in servers}
        best = max(medians.values())
        best_by_count[count] = (max(medians, key=medians.get), medians)
        for server in servers:
            runs = results[(server.label, count)]
            cpu_ms = 1000 * sum(r["cpu_seconds"] for r in runs) / max(1, sum(r["requests"] for r in runs))
            print(f"{server.label:<34} {count:>5} {medians[server.label]:9.1f} "
                  f"{ao._fmt_ms(statistics.median(r['p50_ms'] for r in runs)):>9} "
                  f"{ao._fmt_ms(statistics.median(r['p99_ms'] for r in runs)):>9} "
                  f"{ao._fmt_ms(cpu_ms):>9} "
                  f"{medians[server.label] / best:7.3f}")  # fmt: skip
    print()
    runs_procfile = procfile_server()
    for count, (winner, medians) in best_by_count.items():
        procfile = medians[Server("procfile", False).label]
        verdict = "the best" if procfile >= (1 - args.tolerance) * medians[winner] else "NOT the best"
        print(f"at {count} connections: best {winner} ({medians[winner]:.1f} req/s); the Procfile's web line "
              f"({runs_procfile}) {procfile:.1f} req/s = {procfile / medians[winner]:.3f} x: {verdict}")  # fmt: skip
    # Correctness: every admitted request recorded once, per configuration (its own key).
    for server, label in zip(servers, labels, strict=True):
        records = checks[label]["records"]
        served = sum(r["requests"] - r["status"] for count in counts for r in results[(server.label, count)])
        # wrk abandons at most one request per connection in flight when its time is up, counted by the
        # server (recorded) but not by wrk; the warm-up and the start-up probe add 1 s of load and 1.
        if records < served:
            failed.append(f"{server.label}: {records} records for {served} answered requests")
    if failed:
        print("\nCHECKS FAILED:\n  - " + "\n  - ".join(failed))
        return 1
    print(
        "checks: every response 200; records >= the answered requests for every configuration (the quota "
        "contract keeps them equal to the admitted ones: bench/api_overhead.py checks that exactly)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
