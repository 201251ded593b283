"""`manage.py simulate_shard SCENARIO.toml ...`: one shard of a simulation run, in this process.

Internal: ``manage.py simulate`` (simulation/runner.py) starts it with ``config.settings_simulation``
and the run's own database; it refuses to run under any other settings, so it can never write to the
platform's database. It prints ``@progress <day> <days>`` lines and writes the shard's figures (JSON)
to ``--result``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from simulation.engine import ShardRun
from simulation.processor import SimulatedProcessor, processor_installed
from simulation.results import shard_figures
from simulation.runner import PAYMENTS, PROGRESS_PREFIX
from simulation.scenario import ScenarioError, scenario_load

SETTINGS_MODULE = "config.settings_simulation"


class Command(BaseCommand):
    help = "Internal (started by `simulate`): run one shard of a scenario in this process's own database."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("scenario")
        parser.add_argument("--seed", type=int, required=True)
        parser.add_argument("--shard", type=int, default=0)
        parser.add_argument("--shards", type=int, default=1)
        parser.add_argument("--payments", choices=PAYMENTS, default="simulated")
        parser.add_argument("--result", required=True, help="Where to write the shard's figures (JSON).")

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.SETTINGS_MODULE != SETTINGS_MODULE:
            raise CommandError(
                f"simulate_shard runs only under {SETTINGS_MODULE} (a run's own database); use `manage.py simulate`.",
                returncode=2,
            )
        try:
            scenario = scenario_load(options["scenario"])
        except ScenarioError as exc:
            raise CommandError(str(exc), returncode=2) from exc

        def progress(done: int, total: int) -> None:
            sys.stdout.write(f"{PROGRESS_PREFIX}{done} {total}\n")
            sys.stdout.flush()

        run = ShardRun(
            scenario=scenario,
            seed=options["seed"],
            shard=options["shard"],
            shards=options["shards"],
            progress=progress,
        )
        processor = SimulatedProcessor()
        installed = processor_installed(processor) if options["payments"] == "simulated" else contextlib.nullcontext()
        started = time.monotonic()
        with installed:
            run.run()
        figures = shard_figures(run=run)
        figures["team_days"] = run.team_days
        figures["charges"] = processor.charges
        figures["seconds"] = round(time.monotonic() - started, 3)
        # The process's CPU time (its start and Django's set-up included): on a shared machine the
        # wall-clock time also counts the other processes' turns on the cores.
        figures["cpu_seconds"] = round(time.process_time(), 3)
        figures["seconds_by_phase"] = {phase: round(seconds, 3) for phase, seconds in run.seconds_by_phase.items()}
        target = Path(options["result"])
        partial = target.with_suffix(".partial")
        partial.write_text(json.dumps(figures, sort_keys=True))
        os.replace(partial, target)
