"""Runs of scenarios/smoke.toml through `manage.py simulate`: the same scenario and seed give the same
summary.json byte for byte, another seed another one, and a run split into shards (``--workers 2``,
each shard its own process and database) the same bytes as the single-process run. The platform's
database is never written to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parent.parent.parent
SMOKE = str(ROOT / "scenarios" / "smoke.toml")


def _run(out: Path, *args: str) -> Path:
    call_command("simulate", SMOKE, "--out", str(out), "--no-progress", *args)
    return out


@pytest.fixture(scope="module")
def seed_1(tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("smoke-seed-1"), "--seed", "1")


def test_the_same_scenario_and_seed_give_a_byte_identical_summary(seed_1, tmp_path):
    again = _run(tmp_path / "again", "--seed", "1")
    assert (again / "summary.json").read_bytes() == (seed_1 / "summary.json").read_bytes()
    assert (again / "monthly.csv").read_bytes() == (seed_1 / "monthly.csv").read_bytes()


@pytest.mark.django_db
def test_another_seed_gives_another_run_and_the_platform_database_is_left_alone(seed_1, tmp_path):
    from accounts.models import Team
    from billing.models import Invoice
    from usage.models import UsageRecord

    before = (Team.objects.count(), Invoice.objects.count(), UsageRecord.objects.count())
    other = _run(tmp_path / "seed-2", "--seed", "2")
    assert (Team.objects.count(), Invoice.objects.count(), UsageRecord.objects.count()) == before
    first, second = (json.loads((out / "summary.json").read_text()) for out in (seed_1, other))
    assert (first["seed"], second["seed"]) == (1, 2)
    assert first["months"] != second["months"]
    # The partner's traffic draws from its own stream too: the same partner, other figures.
    assert [m["revenue_cents"]["partner_share"] for m in first["months"]] != [
        m["revenue_cents"]["partner_share"] for m in second["months"]
    ]


def test_shards_in_parallel_give_the_single_process_run_byte_for_byte(seed_1, tmp_path):
    sharded = _run(tmp_path / "sharded", "--seed", "1", "--workers", "2", "--local")
    assert (sharded / "summary.json").read_bytes() == (seed_1 / "summary.json").read_bytes()


def test_the_smoke_run_covers_every_path(seed_1):
    summary = json.loads((seed_1 / "summary.json").read_text())
    months = summary["months"]
    totals = summary["totals"]["revenue_cents"]
    assert [m["month"] for m in months] == ["2026-01", "2026-02", "2026-03"]
    for channel in ("subscriptions", "overage", "partner_share", "licences"):
        assert totals[channel] > 0, channel
    assert sum(m["upgrades"] for m in months) > 0
    assert sum(m["refusals"]["insufficient_quota"] for m in months) > 0
    assert sum(m["payments_failed"] for m in months) > 0
    for month in months:
        assert month["total_cents"] == sum(month["revenue_cents"].values())
    assert summary["totals"]["total_cents"] == sum(totals.values())


def test_the_real_gateway_against_localstripe_gives_the_simulated_processors_run(seed_1, tmp_path):
    """The simulated processor stands in for Stripe faithfully: the same run through the real gateway
    (billing/stripe_gateway.py) against a localstripe the command starts gives the same summary."""
    real = _run(tmp_path / "localstripe", "--seed", "1", "--payments", "localstripe")
    assert (real / "summary.json").read_bytes() == (seed_1 / "summary.json").read_bytes()
    assert json.loads((real / "run.json").read_text())["payments"] == "localstripe"
    assert "Stripe gateway against localstripe" in (real / "report.html").read_text()
