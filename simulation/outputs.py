"""What a run leaves under ``--out``: summary.json, monthly.csv, report.html and run.json (how the
run went: shards, team-days, seconds, payments, and the engine's counts of customer decisions and of
actions the services refused); with ``--compare``, the second run's summary.json, monthly.csv and
run.json under ``compare/<name>/`` and both runs in the report. And the table the command prints."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from simulation.report import CHANNEL_NAMES, money_text, report_html
from simulation.results import monthly_csv, summary_json

if TYPE_CHECKING:
    from simulation.runner import RunOutcome
    from simulation.scenario import Scenario


def _write(path: Path, text: str) -> Path:
    """Written whole or not at all (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
    return path


def run_json(outcome: RunOutcome) -> str:
    return (
        json.dumps(
            {
                "scenario": outcome.summary["scenario"],
                "seed": outcome.summary["seed"],
                "payments": outcome.payments,
                "shards": outcome.shards,
                "team_days": outcome.team_days,
                "seconds": round(outcome.seconds, 3),
                "charges": outcome.charges,
                "seconds_by_phase": outcome.seconds_by_phase,
                "diagnostics": outcome.diagnostics,
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )


def outputs_write(*, out: Path, scenarios: list[Scenario], outcomes: list[RunOutcome]) -> list[Path]:
    written = []
    for index, outcome in enumerate(outcomes):
        folder = out if index == 0 else out / "compare" / scenarios[index].name
        written.append(_write(folder / "summary.json", summary_json(outcome.summary)))
        written.append(_write(folder / "monthly.csv", monthly_csv(outcome.summary)))
        written.append(_write(folder / "run.json", run_json(outcome)))
    written.append(_write(out / "report.html", report_html(scenarios=scenarios, outcomes=outcomes)))
    return written


def summary_table(*, scenarios: list[Scenario], outcomes: list[RunOutcome]) -> str:
    """The run's totals per channel (and the comparison's beside them) as a terminal table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Revenue over the run (USD)")
    table.add_column("Channel")
    for scenario in scenarios:
        table.add_column(scenario.name, justify="right")
    if len(scenarios) > 1:
        table.add_column("Difference", justify="right")
    rows = [(name, key) for key, name in CHANNEL_NAMES.items()] + [("Total", "total")]
    for name, key in rows:
        values = [
            outcome.summary["totals"]["total_cents"]
            if key == "total"
            else outcome.summary["totals"]["revenue_cents"][key]
            for outcome in outcomes
        ]
        cells = [money_text(value) for value in values]
        if len(values) > 1:
            cells.append(money_text(values[1] - values[0]))
        table.add_row(name, *cells)
    for label, figure in (
        ("MRR at the end", lambda s: money_text(s["months"][-1]["mrr_cents"])),
        ("Teams at the end", lambda s: f"{s['months'][-1]['teams']:,}"),
        ("Churned", lambda s: f"{sum(m['churned'] for m in s['months']):,}"),
        (
            "Payments failed / recovered",
            lambda s: (
                f"{sum(m['payments_failed'] for m in s['months']):,} / {sum(m['recovered'] for m in s['months']):,}"
            ),
        ),
    ):
        cells = [figure(outcome.summary) for outcome in outcomes]
        table.add_row(label, *cells, *([""] if len(outcomes) > 1 else []))
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, color_system=None, legacy_windows=False)
    console.print(table)
    for scenario, outcome in zip(scenarios, outcomes, strict=True):
        speed = outcome.team_days / outcome.seconds if outcome.seconds else 0
        console.print(
            f"{scenario.name}: {outcome.team_days:,} team-days in {outcome.seconds:.1f} s "
            f"({speed:,.0f} team-days/s), {outcome.shards} shard(s), payments {outcome.payments}."
        )
    return buffer.getvalue()
