"""`manage.py simulate SCENARIO.toml [--seed N] [--out DIR] [--compare OTHER.toml] [--payments simulated|localstripe]
[--workers N]`: run a scenario forward in simulated time and write its summary.json, monthly.csv and
report.html (DESIGN.md "The simulator"; README.md shows a worked example).

A scenario that does not validate is reported with its key path, exits 2 and writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from simulation import runner
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
            "--workers", type=int, default=1, help="Shards simulated side by side (each its own process and database)."
        )
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
        out = Path(options["out"] or runner.SIMULATIONS_DIR / f"{loaded[0].name}-{seed}")
        outcomes = []
        for scenario in loaded:
            outcomes.append(
                runner.simulate(
                    scenario=scenario,
                    seed=seed,
                    payments=options["payments"],
                    workers=options["workers"],
                    keep_work=options["keep_work"],
                    show_progress=not options["no_progress"],
                    stderr=self.stderr,
                )
            )
        written = outputs_write(out=out, scenarios=loaded, outcomes=outcomes)
        self.stdout.write(summary_table(scenarios=loaded, outcomes=outcomes))
        for path in written:
            self.stdout.write(f"Wrote {path}")
