"""What operators see of simulations in the admin: stored scenarios, runs and their shards.

Only the runs' bookkeeping lives in the platform's database: a run's teams, invoices and usage live
in the run's own database (simulation/runner.py) and its results in files under ``out_dir``.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class StoredScenario(models.Model):
    """A scenario (the TOML text of a scenarios/*.toml file) that operators keep and run from the admin."""

    name = models.SlugField(unique=True)
    text = models.TextField("scenario (TOML)", help_text="The format is described in README.md, 'The simulator'.")
    seed = models.PositiveIntegerField(default=1, help_text="The seed a run from the admin uses.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from simulation.scenario import ScenarioError, scenario_parse

        try:
            scenario_parse(self.text or "", default_name=self.name or "scenario")
        except ScenarioError as exc:
            raise ValidationError({"text": str(exc)}) from exc


class SimulationRun(models.Model):
    """One run of a scenario with a seed, started from the admin or by `manage.py simulate`."""

    scenario = models.ForeignKey(StoredScenario, on_delete=models.SET_NULL, null=True, blank=True, related_name="runs")
    scenario_name = models.CharField(max_length=50)
    scenario_text = models.TextField()
    seed = models.PositiveBigIntegerField()
    workers = models.PositiveSmallIntegerField(default=1)
    payments = models.CharField(max_length=12, default="simulated")
    status = models.CharField(max_length=12, choices=RunStatus.choices, default=RunStatus.QUEUED)
    out_dir = models.CharField("output folder", max_length=500, blank=True)
    error = models.TextField(blank=True)
    totals = models.JSONField(null=True, blank=True, help_text="summary.json's totals, once the run succeeded.")
    team_days = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.scenario_name} (seed {self.seed})"

    @property
    def seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class SimulationShard(models.Model):
    """One shard of a run simulated by a Celery worker (``--workers N``): its figures, merged by the
    process that started the run."""

    run = models.ForeignKey(SimulationRun, on_delete=models.CASCADE, related_name="shards")
    index = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=12, choices=RunStatus.choices, default=RunStatus.QUEUED)
    database = models.CharField(
        max_length=500,
        help_text="The shard's own database: a SQLite file, or a database on the platform's PostgreSQL server.",
    )
    days_done = models.PositiveIntegerField(default=0)
    figures = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["run", "index"]
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="simulation_shard_once_per_run")]

    def __str__(self) -> str:
        return f"{self.run} shard {self.index}"
