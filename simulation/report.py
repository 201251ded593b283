"""report.html: one self-contained page per run (or per comparison), for people.

Self-contained and offline: one HTML file with its style inline and its charts as inline SVG
(core/charts.py: every bar and point carries ``data-series``, ``data-label`` and ``data-value``, and
every chart has a table with the same numbers under it); no script, no font, no image, no link to
load. Money is shown in dollars (the summary's cents / 100).

Charts: revenue by channel stacked per month, MRR, subscribers by tier, upgrades / downgrades / churn,
refusals by code, dunning (failed charges and recovered invoices). With ``--compare`` every chart is
shown for both runs side by side, and a table of the differences (per channel and per month) leads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.template.loader import render_to_string
from django.utils.safestring import SafeString

from core.charts import ChartSeries, bar_chart_svg, line_chart_svg

if TYPE_CHECKING:
    from simulation.runner import RunOutcome
    from simulation.scenario import Scenario

GROSS_CHANNELS = ("subscriptions", "overage", "partner_share", "licences")
CHANNEL_NAMES = {
    "subscriptions": "Subscriptions",
    "overage": "Overage",
    "partner_share": "Partner share",
    "licences": "Licences",
    "refunds": "Refunds",
}


def dollars(cents: int) -> float:
    return cents / 100


def money_text(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents) / 100:,.2f}"


@dataclass(frozen=True)
class Chart:
    key: str
    title: str
    svg: SafeString
    header: list[str]
    rows: list[list[str]]


def _table(labels: list[str], series: list[ChartSeries], fmt: Any) -> tuple[list[str], list[list[str]]]:
    header = ["Month", *(one.name for one in series)]
    rows = [[label, *(fmt(one.values[i]) for one in series)] for i, label in enumerate(labels)]
    return header, rows


def charts_for(summary: dict[str, Any], *, tiers: list[str], codes: list[str]) -> list[Chart]:
    """The run's charts, each with its table (see the module docstring). ``tiers`` and ``codes`` are
    the series of the subscribers and refusals charts, the same for both runs of a comparison, so a
    tier keeps its colour side by side."""
    months = summary["months"]
    labels = [month["month"] for month in months]
    charts: list[Chart] = []

    def add(
        key: str,
        title: str,
        series: list[ChartSeries],
        *,
        kind: str = "bar",
        stacked: bool = False,
        unit: str = "",
        money: bool = False,
    ) -> None:
        draw = bar_chart_svg if kind == "bar" else line_chart_svg
        svg = draw(labels=labels, series=series, title=title, unit=unit, stacked=stacked)
        header, rows = _table(labels, series, (lambda v: f"${v:,.2f}") if money else (lambda v: f"{v:,}"))
        charts.append(Chart(key=key, title=title, svg=svg, header=header, rows=rows))

    add(
        "revenue",
        "Revenue by channel (stacked), per month",
        [ChartSeries(channel, [dollars(m["revenue_cents"][channel]) for m in months]) for channel in GROSS_CHANNELS],
        stacked=True,
        unit="USD",
        money=True,
    )
    add(
        "mrr",
        "Monthly recurring revenue at month end",
        [ChartSeries("mrr", [dollars(m["mrr_cents"]) for m in months])],
        kind="line",
        unit="USD",
        money=True,
    )
    add(
        "subscribers",
        "Subscribers by tier at month end",
        [ChartSeries(slug, [m["subscribers_by_tier"].get(slug, 0) for m in months]) for slug in tiers],
        kind="line",
        unit="teams",
    )
    add(
        "movements",
        "Upgrades, downgrades and churn",
        [ChartSeries(name, [m[name] for m in months]) for name in ("upgrades", "downgrades", "churned")],
        unit="teams",
    )
    add(
        "refusals",
        "Refused requests by error code",
        [ChartSeries(code, [m["refusals"].get(code, 0) for m in months]) for code in codes],
        stacked=True,
        unit="requests",
    )
    add(
        "dunning",
        "Dunning: failed charges and invoices recovered",
        [ChartSeries(name, [m[name] for m in months]) for name in ("payments_failed", "recovered")],
        unit="count",
    )
    return charts


def _totals(summary: dict[str, Any]) -> list[tuple[str, str, int]]:
    revenue = summary["totals"]["revenue_cents"]
    rows = [(CHANNEL_NAMES[channel], money_text(cents), cents) for channel, cents in revenue.items()]
    rows.sort(key=lambda row: list(CHANNEL_NAMES.values()).index(row[0]))
    rows.append(("Total", money_text(summary["totals"]["total_cents"]), summary["totals"]["total_cents"]))
    return rows


def _differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per channel and per month: A, B, B - A and the change in percent of A."""

    def pct(before: int, after: int) -> str:
        return f"{(after - before) * 100 / before:+.1f}%" if before else "n/a"

    channels = []
    for channel in (*CHANNEL_NAMES, "total"):
        x = a["totals"]["total_cents"] if channel == "total" else a["totals"]["revenue_cents"][channel]
        y = b["totals"]["total_cents"] if channel == "total" else b["totals"]["revenue_cents"][channel]
        name = "Total" if channel == "total" else CHANNEL_NAMES[channel]
        channels.append([name, money_text(x), money_text(y), money_text(y - x), pct(x, y)])
    months = []
    for ma, mb in zip(a["months"], b["months"], strict=False):
        months.append(
            [
                ma["month"],
                money_text(ma["total_cents"]),
                money_text(mb["total_cents"]),
                money_text(mb["total_cents"] - ma["total_cents"]),
                f"{ma['churned']} / {mb['churned']}",
                f"{ma['mrr_cents'] // 100:,} / {mb['mrr_cents'] // 100:,}",
            ]
        )
    churn_a = sum(m["churned"] for m in a["months"])
    churn_b = sum(m["churned"] for m in b["months"])
    return {"channels": channels, "months": months, "churn": (churn_a, churn_b, pct(churn_a, churn_b))}


def cancel_rate(diagnostics: dict[str, int]) -> float | None:
    """Paying teams' decisions to cancel per 1,000 paying team-days: the churn the scenario's
    parameters drive, before the timing of period ends and dunning shapes the monthly figures."""
    exposure = diagnostics.get("team-days paying, may cancel", 0)
    return 1000 * diagnostics.get("decided: cancel", 0) / exposure if exposure else None


def report_html(*, scenarios: list[Scenario], outcomes: list[RunOutcome]) -> str:
    """The report of one run, or of two side by side (the first is the run, the second the comparison)."""

    def price(slug: str) -> int:
        specs = [scenario.tiers[slug] for scenario in scenarios if slug in scenario.tiers]
        return specs[0].values.get("price_cents", 0) if specs else 0

    months = [month for outcome in outcomes for month in outcome.summary["months"]]
    tiers = sorted({slug for m in months for slug in m["subscribers_by_tier"]}, key=lambda slug: (price(slug), slug))
    codes = sorted({code for m in months for code in m["refusals"]})
    runs = []
    for scenario, outcome in zip(scenarios, outcomes, strict=True):
        summary = outcome.summary
        runs.append(
            {
                "scenario": scenario,
                "summary": summary,
                "outcome": outcome,
                "charts": charts_for(summary, tiers=tiers, codes=codes),
                "totals": _totals(summary),
                "diagnostics": sorted(outcome.diagnostics.items()),
                "speed": f"{round(outcome.team_days / outcome.seconds) if outcome.seconds else 0:,}",
                "team_days": f"{outcome.team_days:,}",
            }
        )
    chart_rows = [
        [(index, run["scenario"].name, run["charts"][i]) for index, run in enumerate(runs)]
        for i in range(len(runs[0]["charts"]))
    ]
    context = {
        "runs": runs,
        "chart_rows": chart_rows,
        "compare": len(runs) > 1,
        "differences": _differences(runs[0]["summary"], runs[1]["summary"]) if len(runs) > 1 else None,
        "cancel_rates": [cancel_rate(outcome.diagnostics) for outcome in outcomes],
    }
    return render_to_string("simulation/report.html", context)
