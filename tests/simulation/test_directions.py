"""What the shipped what-if scenarios do against baseline.toml, run with `simulate --compare`.

To keep the suite quick the three files run for their first eight months (the share cut is in July,
so two months after it are in the run); otherwise they are the files as shipped. The same seed gives
every team the same random numbers in every run (simulation/population.py, SimTeam), so what differs
is the change's effect, not sampling noise.

price-rise.toml makes Plus and Pro 25% dearer. Its parameters imply:
- churn: every segment's price_elasticity is 1.5, so a paying team's daily chance to cancel is
  1.25 ** 1.5 = 1.40 times the baseline's. Each run sums the chances its paying teams took (run.json):
  per paying team-day, the price rise's must be 1.40 times the baseline's within 5% (the mix of Plus
  and Pro teams shifts a little); and the cancellations decided must be within three Poisson
  deviations of what those chances imply (a few dozen in eight months: the count itself is too noisy
  to check the 1.40 directly; with the same random numbers it can only be higher).
- subscription revenue: up, but by less than the 25% on the price (fewer teams pay, fewer move up,
  and the Enterprise fee is not raised); MRR at the end up too; fewer teams on Plus.
partner-share-cut.toml cuts Nimbus Cloud's share from 15% to 10% on July 1st: every figure of every
month is the baseline's except the partner channel (and so the total) from July, where it is lower by
5 points of Nimbus's revenue: about a fifth of all partner share (Nimbus bills about 60% more than
Cirrus per day at a higher share), so the cut must take between 10% and 35% of the channel.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parent.parent.parent
MONTHS = 8
CUT_FROM = "2026-07"
EXPECTED_CANCEL_RATIO = 1.25**1.5  # (25% dearer) ** price_elasticity


def _shortened(name: str, folder: Path) -> Path:
    text = (ROOT / "scenarios" / f"{name}.toml").read_text()
    assert "\nmonths = 12\n" in text
    path = folder / f"{name}.toml"
    path.write_text(text.replace("\nmonths = 12\n", f"\nmonths = {MONTHS}\n"))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("directions")
    paths = {name: _shortened(name, folder) for name in ("baseline", "price-rise", "partner-share-cut")}
    outs = {"compare": folder / "compare", "cut": folder / "cut"}
    jobs = [
        lambda: call_command(
            "simulate", str(paths["baseline"]), "--compare", str(paths["price-rise"]), "--out", str(outs["compare"]),
            "--no-progress",
        ),
        lambda: call_command("simulate", str(paths["partner-share-cut"]), "--out", str(outs["cut"]), "--no-progress"),
    ]  # fmt: skip
    errors: list[BaseException] = []

    def guarded(job) -> None:
        try:
            job()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(job,)) for job in jobs]  # side by side: two cores
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return {
        "baseline": outs["compare"],
        "price-rise": outs["compare"] / "compare" / "price-rise",
        "partner-share-cut": outs["cut"],
    }


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def _cancels(folder: Path) -> tuple[int, float, int]:
    """(cancellations decided, the cancellations the daily chances imply, paying team-days that could
    cancel) of a run, from its run.json."""
    diagnostics = json.loads((folder / "run.json").read_text())["diagnostics"]
    return (
        diagnostics["decided: cancel"],
        diagnostics["cancel chance, millionths"] / 1_000_000,
        diagnostics["team-days paying, may cancel"],
    )


def test_a_price_rise_raises_churn_as_its_elasticity_implies(runs):
    (decided_b, implied_b, days_b), (decided_r, implied_r, days_r) = (
        _cancels(runs["baseline"]),
        _cancels(runs["price-rise"]),
    )
    # The chance a paying team takes each day: 1.40 times the baseline's. Not exactly, as the mix of
    # Plus (4% a month) and Pro (2%) team-days differs a little between the runs.
    assert (implied_r / days_r) / (implied_b / days_b) == pytest.approx(EXPECTED_CANCEL_RATIO, rel=0.05)
    # What the teams decided follows those chances: within three Poisson deviations of what they imply.
    for decided, implied in ((decided_b, implied_b), (decided_r, implied_r)):
        assert abs(decided - implied) <= 3 * implied**0.5, (decided, implied)
    base, rise = _summary(runs["baseline"]), _summary(runs["price-rise"])
    assert decided_r > decided_b
    assert sum(m["churned"] for m in rise["months"]) > sum(m["churned"] for m in base["months"])
    # The report leads with the comparison and shows both rates.
    report = (runs["baseline"] / "report.html").read_text()
    assert "price-rise against baseline" in report and report.count("data-cancel-rate=") == 2


def test_a_price_rise_shifts_subscription_revenue_up_by_less_than_the_price(runs):
    base, rise = _summary(runs["baseline"]), _summary(runs["price-rise"])
    subscriptions = rise["totals"]["revenue_cents"]["subscriptions"] / base["totals"]["revenue_cents"]["subscriptions"]
    assert 1.0 < subscriptions < 1.25, subscriptions
    assert rise["months"][-1]["mrr_cents"] > base["months"][-1]["mrr_cents"]
    assert rise["months"][-1]["subscribers_by_tier"]["plus"] < base["months"][-1]["subscribers_by_tier"]["plus"]
    # Partners and licensees do not see the catalog's prices.
    for channel in ("partner_share", "licences"):
        assert rise["totals"]["revenue_cents"][channel] == base["totals"]["revenue_cents"][channel]


def test_a_partner_share_cut_changes_only_the_partner_channel_after_the_change(runs):
    base, cut = _summary(runs["baseline"]), _summary(runs["partner-share-cut"])
    assert [m["month"] for m in cut["months"]] == [m["month"] for m in base["months"]]
    after = 0
    for before_month, cut_month in zip(base["months"], cut["months"], strict=True):
        same = {k: v for k, v in cut_month.items() if k not in ("revenue_cents", "total_cents")}
        assert same == {k: v for k, v in before_month.items() if k not in ("revenue_cents", "total_cents")}
        revenue, revenue_before = dict(cut_month["revenue_cents"]), dict(before_month["revenue_cents"])
        share, share_before = revenue.pop("partner_share"), revenue_before.pop("partner_share")
        assert revenue == revenue_before, cut_month["month"]
        if cut_month["month"] < CUT_FROM:
            assert (share, cut_month["total_cents"]) == (share_before, before_month["total_cents"])
        else:
            after += 1
            assert 0.10 <= 1 - share / share_before <= 0.35, (cut_month["month"], share, share_before)
            assert cut_month["total_cents"] - before_month["total_cents"] == share - share_before
    assert after == MONTHS - 6
