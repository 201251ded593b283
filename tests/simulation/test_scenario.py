"""Scenario files: every shipped one loads; a broken one is refused with the key path and what is
allowed, by the loader and by `manage.py simulate` (exit 2, nothing written)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from simulation.scenario import ScenarioError, scenario_load, scenario_parse

ROOT = Path(__file__).resolve().parent.parent.parent
SCENARIOS = sorted((ROOT / "scenarios").glob("*.toml"))
SMOKE = (ROOT / "scenarios" / "smoke.toml").read_text()


def test_every_shipped_scenario_loads():
    names = {path.stem for path in SCENARIOS}
    assert {"smoke", "baseline", "price-rise", "partner-share-cut", "assistant-tier"} <= names
    for path in SCENARIOS:
        scenario = scenario_load(path)
        assert scenario.name == path.stem
        assert scenario.source == path.read_text()


def test_the_smoke_scenario_reads_as_written():
    scenario = scenario_parse(SMOKE)
    assert (scenario.start, scenario.months, scenario.end) == (dt.date(2026, 1, 1), 3, dt.date(2026, 4, 1))
    hobbyists, startups, failing = scenario.segments
    assert hobbyists.behaviour.churn_per_month == 0.1
    assert hobbyists.behaviour.ladder == ("free", "plus", "pro")  # the public tiers, cheapest first
    assert startups.start_tier == "pro" and startups.failing_card_share == 0.25
    assert failing.failing_card_share == 1.0 and failing.behaviour.fix_card_in_dunning == 0.3
    assert scenario.partners[0].share_changes == ((dt.date(2026, 3, 1), 1000),)
    assert scenario.models[0].model_id == "Llama-5-Preview" and scenario.models[0].tiers == ("pro", "enterprise")
    assert scenario.tiers["plus"].reference_price_cents == 2000


BROKEN = [
    # (what, change to smoke.toml, the key path, words the message must hold)
    ("unknown key", ("churn_per_month = 0.1", "churn_per_mont = 0.1"), "segments[0].behaviour.churn_per_mont",
     ["unknown key", "churn_per_month", "upgrade_when_refused"]),
    ("wrong type", ("requests_per_day = 30", 'requests_per_day = "thirty"'), "segments[0].traffic.requests_per_day",
     ["must be a number", "'thirty'"]),
    ("negative rate", ("arrivals_per_month = 2", "arrivals_per_month = -2"), "segments[0].arrivals_per_month",
     ["at least 0", "-2"]),
    ("probability above 1", ("churn_per_month = 0.1", "churn_per_month = 1.5"), "segments[0].behaviour.churn_per_month",
     ["at most 1"]),
    ("share rate before the start", ("date = 2026-03-01", "date = 2025-12-01"), "partners[0].share_changes[0].date",
     ["overlaps", "2026-01-01"]),
    ("unknown tier", ('start_tier = "pro"', 'start_tier = "platinum"'), "segments[1].start_tier",
     ["platinum", "free, assistant, plus, pro, enterprise"]),
    ("not the first of a month", ("start = 2026-01-01", "start = 2026-01-02"), "scenario.start", ["first day"]),
    ("months out of range", ("months = 3", "months = 40"), "scenario.months", ["at most 36"]),
]  # fmt: skip


@pytest.mark.parametrize(("what", "change", "path", "words"), BROKEN, ids=[case[0] for case in BROKEN])
def test_a_broken_scenario_names_the_key_path_and_what_is_allowed(what, change, path, words):
    old, new = change
    assert old in SMOKE
    with pytest.raises(ScenarioError) as caught:
        scenario_parse(SMOKE.replace(old, new, 1))
    assert caught.value.path == path, str(caught.value)
    for word in words:
        assert word in caught.value.message, str(caught.value)


def test_overlapping_share_rate_changes_are_refused():
    text = SMOKE.replace(
        "[[partners.share_changes]]\ndate = 2026-03-01\nshare_bps = 1000",
        "[[partners.share_changes]]\ndate = 2026-03-01\nshare_bps = 1000\n"
        "[[partners.share_changes]]\ndate = 2026-02-15\nshare_bps = 900",
    )
    with pytest.raises(ScenarioError) as caught:
        scenario_parse(text)
    assert caught.value.path == "partners[0].share_changes[1].date"
    assert "the previous change (2026-03-01)" in caught.value.message


def test_a_tier_the_catalog_rules_refuse_is_refused_at_its_key():
    with pytest.raises(ScenarioError) as caught:
        scenario_parse(SMOKE + '\n[catalog.tiers.plus]\noverage_policy = "bill"\n')
    assert caught.value.path == "catalog.tiers.plus.overage_cents_per_million_tokens"
    with pytest.raises(ScenarioError) as caught:
        scenario_parse(SMOKE + '\n[catalog.tiers.companion]\nname = "Companion"\n')
    assert caught.value.path == "catalog.tiers.companion.price_cents"
    assert "required for a new tier" in caught.value.message


def test_invalid_toml_is_refused():
    with pytest.raises(ScenarioError) as caught:
        scenario_parse(SMOKE + "\n[[[")
    assert "not valid TOML" in str(caught.value)


def test_the_command_refuses_a_broken_scenario_with_exit_2_and_writes_nothing(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text(SMOKE.replace("requests_per_day = 30", "requests_per_day = -30"))
    out = tmp_path / "out"
    with pytest.raises(CommandError) as caught:
        call_command("simulate", str(broken), "--out", str(out), "--no-progress")
    assert caught.value.returncode == 2
    assert "segments[0].traffic.requests_per_day: must be at least 0; got -30." in str(caught.value)
    assert not out.exists()
    # A broken --compare scenario is refused before the first one runs.
    with pytest.raises(CommandError) as caught:
        call_command("simulate", str(ROOT / "scenarios" / "smoke.toml"), "--compare", str(broken), "--out", str(out))
    assert caught.value.returncode == 2
    assert not out.exists()


def test_the_shard_command_refuses_to_run_outside_the_simulation_settings(tmp_path):
    with pytest.raises(CommandError) as caught:
        call_command(
            "simulate_shard",
            str(ROOT / "scenarios" / "smoke.toml"),
            "--seed",
            "1",
            "--result",
            str(tmp_path / "r.json"),
        )
    assert caught.value.returncode == 2
    assert "config.settings_simulation" in str(caught.value)
