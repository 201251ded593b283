"""`manage.py simulate SCENARIO.toml [--seed N] [--out DIR] [--compare OTHER.toml] [--payments simulated|localstripe]
[--workers N]`: run a scenario forward in simulated time and write its summary.json, monthly.csv and
report.html (DESIGN.md "The simulator"; README.md shows a worked example).

A scenario that does not validate is reported with its key path, exits 2 and writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from simulation import runner, services
from simulation.databases import postgres_server_of_settings
from simulation.outputs import outputs_write, summary_table
from simulation.scenario import ScenarioError, scenario_load


class Command(BaseCommand):
    help = (
        "Run a scenario (TOML) of teams, tiers, partners and licensees through TierLab's own services in "
        "simulated time, in a database of its own, and write summary.json, monthly.csv and report.html."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("scenario", help="The scenario file, e.g. scenarios/baseline.toml.")
        parser.add_argument("--seed", type=int, default=1, help="The random seed (default 1): same seed, same run.")
        parser.add_argument("--out", help="Output folder (default var/simulations/<scenario>-<seed>/).")
        parser.add_argument("--compare", help="A second scenario, run with the same seed and shown side by side.")
        parser.add_argument(
            "--payments",
            choices=runner.PAYMENTS,
            default="simulated",
            help="simulated (default, fast): the test cards' behaviour in memory; localstripe: the real "
            "Stripe gateway against a localstripe started for the run (small runs).",
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=1,
            help="Split the teams into this many shards, simulated side by side by the platform's Celery workers "
            "(each shard its own process and database), with the same results as one process.",
        )
        parser.add_argument(
            "--local",
            action="store_true",
            help="With --workers: run the shards as processes here, not on Celery workers.",
        )
        parser.add_argument(
            "--database-url",
            help="A PostgreSQL server (postgres://...) for the shards' databases, one per shard, dropped afterwards "
            "(the role needs CREATEDB). Default: SQLite files; on Celery workers, the platform's server if it is "
            "PostgreSQL.",
        )
        parser.add_argument("--record", action="store_true", help="List the run in the admin (Simulation runs).")
        parser.add_argument(
            "--keep-work", action="store_true", help="Keep the run's databases under var/simulations/.work/."
        )
        parser.add_argument("--no-progress", action="store_true", help="No progress bar.")

    def handle(self, *args: Any, **options: Any) -> None:
        if not 1 <= options["workers"] <= 64:
            raise CommandError(f"--workers must be from 1 to 64; got {options['workers']}.", returncode=2)
        if options["seed"] < 0:
            raise CommandError(f"--seed must be 0 or more; got {options['seed']}.", returncode=2)
        # Everything is validated before anything runs or is written.
        scenarios = [options["scenario"]] + ([options["compare"]] if options.get("compare") else [])
        loaded = []
        for path in scenarios:
            try:
                loaded.append(scenario_load(path))
            except ScenarioError as exc:
                raise CommandError(f"{path}: {exc}", returncode=2) from exc
        seed = options["seed"]
        out = Path(options["out"] or services.default_out_dir(name=loaded[0].name, seed=seed))
        workers, local = options["workers"], options["local"] or options["workers"] == 1
        server_url = options.get("database_url") or (None if local else postgres_server_of_settings())
        outcomes = []
        for scenario in loaded:
            record = options["record"] or not local  # Celery runs always are: their shards report there
            run = (
                services.simulation_run_record(
                    scenario=scenario, seed=seed, workers=workers, payments=options["payments"]
                )
                if record
                else None
            )
            if run is not None:
                services.simulation_run_started(run=run)
            try:
                outcome = runner.simulate(
                    scenario=scenario,
                    seed=seed,
                    payments=options["payments"],
                    workers=workers,
                    local=local,
                    keep_work=options["keep_work"],
                    show_progress=not options["no_progress"],
                    stderr=self.stderr,
                    server_url=server_url,
                    run_id=run.pk if run is not None else None,
                )
            except runner.SimulationFailed as exc:
                if run is not None:
                    services.simulation_run_finished(run=run, outcome=None, out_dir=None, error=str(exc))
                raise CommandError(f"{scenario.name}: {exc}") from exc
            if run is not None:
                services.simulation_run_finished(run=run, outcome=outcome, out_dir=out)
            outcomes.append(outcome)
        written = outputs_write(out=out, scenarios=loaded, outcomes=outcomes)
        self.stdout.write(summary_table(scenarios=loaded, outcomes=outcomes))
        for path in written:
            self.stdout.write(f"Wrote {path}")
