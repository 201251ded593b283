"""Operators in the admin: a stored scenario is validated like a file, runs from an action (a Celery
task, run here in-process), and the run is listed with its status, duration and files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.urls import reverse

from simulation import services
from simulation.models import RunStatus, SimulationRun, StoredScenario
from simulation.tasks import simulation_run_task

ROOT = Path(__file__).resolve().parent.parent.parent
SMOKE = (ROOT / "scenarios" / "smoke.toml").read_text()

pytestmark = pytest.mark.django_db


def test_a_stored_scenario_is_validated_with_the_key_path(admin_client):
    url = reverse("admin:simulation_storedscenario_add")
    broken = SMOKE.replace("months = 3", "months = 0")
    response = admin_client.post(url, {"name": "smoke", "text": broken, "seed": 1})
    assert response.status_code == 200
    assert "scenario.months: must be at least 1; got 0." in response.content.decode()
    assert not StoredScenario.objects.exists()
    response = admin_client.post(url, {"name": "smoke", "text": SMOKE, "seed": 4})
    assert response.status_code == 302
    assert StoredScenario.objects.get().seed == 4


def test_an_operator_runs_a_stored_scenario_and_reads_its_report(
    admin_client, django_capture_on_commit_callbacks, monkeypatch, tmp_path
):
    monkeypatch.setattr(services, "SIMULATIONS_DIR", tmp_path)
    stored = StoredScenario.objects.create(name="smoke", text=SMOKE, seed=4)
    changelist = reverse("admin:simulation_storedscenario_changelist")
    form = {"action": "run_scenarios", "_selected_action": [stored.pk], "seed": 5, "workers": 1}
    response = admin_client.post(changelist, form)
    assert response.status_code == 200 and b"Run scenarios" in response.content  # the form page first
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = admin_client.post(changelist, {**form, "apply": "1"})
    assert response.status_code == 302
    run = SimulationRun.objects.get()
    assert (run.status, run.seed, run.scenario_name, run.scenario) == (RunStatus.QUEUED, 5, "smoke", stored)
    assert len(callbacks) == 1  # the task is queued once the run is committed

    assert simulation_run_task(run.pk) == RunStatus.SUCCEEDED  # what the worker does with it
    assert simulation_run_task(run.pk) == RunStatus.SUCCEEDED  # redelivered: left alone
    run.refresh_from_db()
    out = Path(run.out_dir)
    assert out == tmp_path / f"smoke-5-run{run.pk}"
    summary = json.loads((out / "summary.json").read_text())
    assert run.totals == summary["totals"] and summary["seed"] == 5
    assert run.seconds > 0 and run.team_days > 0

    page = admin_client.get(reverse("admin:simulation_simulationrun_changelist")).content.decode()
    report_url = reverse("admin:simulation_simulationrun_file", args=[run.pk, "report.html"])
    assert report_url in page and "Succeeded" in page
    report = admin_client.get(report_url)
    assert report.status_code == 200 and report["Content-Type"].startswith("text/html")
    assert b"TierLab simulation: smoke" in b"".join(report.streaming_content)
    download = admin_client.get(reverse("admin:simulation_simulationrun_file", args=[run.pk, "summary.json"]))
    assert download.status_code == 200 and "attachment" in download["Content-Disposition"]
    for name in ("run.json", "scenario.toml"):  # only the three files a run writes for people
        assert admin_client.get(f"/admin/simulation/simulationrun/{run.pk}/files/{name}").status_code == 404
    # A path in the name never reaches the view (the URL takes no "/").
    response = admin_client.get(f"/admin/simulation/simulationrun/{run.pk}/files/..%2F..%2Fsummary.json", follow=True)
    assert "Content-Disposition" not in response and b'"totals"' not in response.content


def test_a_run_that_fails_says_why(monkeypatch, tmp_path):
    monkeypatch.setattr(services, "SIMULATIONS_DIR", tmp_path)
    stored = StoredScenario.objects.create(name="smoke", text=SMOKE, seed=1)
    run = services.stored_scenario_run_start(stored=stored)
    SimulationRun.objects.filter(pk=run.pk).update(scenario_text=SMOKE.replace("[scenario]", "[scenari]"))
    assert simulation_run_task(run.pk) == RunStatus.FAILED
    run.refresh_from_db()
    assert "scenari: unknown key" in run.error and run.out_dir == ""
