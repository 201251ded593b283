"""report.html in a real browser (Debian chromium), opened from the file a run wrote: every chart's
marks carry the figures of summary.json, for both runs of a comparison side by side, and the page
loads nothing at all beyond itself (no script, stylesheet, font or image, from anywhere)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command

from tests.simulation.test_hand_computed import TINY

pytestmark = pytest.mark.e2e

# The same tiny scenario with its partner's share cut from February instead of March.
TINY_CUT = TINY.replace('name = "tiny"', 'name = "tiny-cut"').replace(
    "date = 2026-03-01\nshare_bps = 1000", "date = 2026-02-01\nshare_bps = 1000"
)
# chart key -> (series name, figure of a month of summary.json) for every series the chart draws
MONEY_CHANNELS = ("subscriptions", "overage", "partner_share", "licences")


def _expected_marks(summary: dict) -> dict[tuple[str, str, str], float]:
    """(chart, series, month) -> the value the chart's mark must carry (money in dollars)."""
    marks: dict[tuple[str, str, str], float] = {}
    for month in summary["months"]:
        name = month["month"]
        for channel in MONEY_CHANNELS:
            marks[("revenue", channel, name)] = month["revenue_cents"][channel] / 100
        marks[("mrr", "mrr", name)] = month["mrr_cents"] / 100
        for slug, count in month["subscribers_by_tier"].items():
            marks[("subscribers", slug, name)] = count
        for figure in ("upgrades", "downgrades", "churned"):
            marks[("movements", figure, name)] = month[figure]
        for code, count in month["refusals"].items():
            marks[("refusals", code, name)] = count
        for figure in ("payments_failed", "recovered"):
            marks[("dunning", figure, name)] = month[figure]
    return marks


def test_the_report_shows_summary_figures_and_loads_nothing_from_outside(browser, tmp_path):
    scenarios = []
    assert TINY_CUT.count("2026-02-01") == 1
    for text in (TINY, TINY_CUT):
        path = tmp_path / f"{len(scenarios)}.toml"
        path.write_text(text)
        scenarios.append(path)
    out = tmp_path / "out"
    call_command("simulate", str(scenarios[0]), "--compare", str(scenarios[1]), "--out", str(out), "--no-progress")
    summaries = [
        json.loads((out / "summary.json").read_text()),
        json.loads((out / "compare" / "tiny-cut" / "summary.json").read_text()),
    ]
    report = out / "report.html"

    context = browser.new_context(viewport={"width": 1400, "height": 1000}, java_script_enabled=False)
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    try:
        page.goto(report.as_uri())
        # Only the report itself was requested: nothing inline points anywhere.
        assert requests == [report.as_uri()]
        assert page.title() == "TierLab simulation: tiny vs tiny-cut"

        marks = page.eval_on_selector_all(
            "figure[data-chart-key] .chart-mark",
            """els => els.map(e => [e.closest('figure').dataset.run, e.closest('figure').dataset.chartKey,
                                   e.closest('[data-series]').dataset.series, e.dataset.label, e.dataset.value])""",
        )
        for run, summary in enumerate(summaries):
            expected = _expected_marks(summary)
            found = {(chart, series, label): float(value) for r, chart, series, label, value in marks if r == str(run)}
            assert found == pytest.approx(expected), f"run {run}"

        # The comparison leads with the differences: the cut shows in the partner channel only.
        rows = page.eval_on_selector_all(
            "table[data-table=differences-channels] tbody tr", "rows => rows.map(r => r.innerText.split('\\t'))"
        )
        by_channel = {row[0]: row for row in rows}
        assert by_channel["Partner share"][3] == "-$2.80"  # February 840 -> 560; January and March the same
        assert by_channel["Subscriptions"][3] == "$0.00"
        # The scenarios are echoed as written.
        assert page.inner_text("pre[data-scenario='1']").strip() == TINY_CUT.strip()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    finally:
        context.close()
    assert Path(tmp_path / "report.png").stat().st_size > 0
