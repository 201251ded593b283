"""Simulations in the admin: stored scenarios (run them from here: a Celery task) and the runs, with
their status, duration and files (report.html, summary.json, monthly.csv)."""

from __future__ import annotations

from pathlib import Path

from django import forms
from django.contrib import admin, messages
from django.http import FileResponse, Http404, HttpRequest
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from core.admin_base import ReadOnlyAdmin, ReadOnlyInline, admin_action_with_form
from simulation import services
from simulation.models import RunStatus, SimulationRun, SimulationShard, StoredScenario

# The files a run writes that the admin serves, and as what.
RUN_FILES = {
    "report.html": "text/html; charset=utf-8",
    "summary.json": "application/json",
    "monthly.csv": "text/csv; charset=utf-8",
}


class RunForm(forms.Form):
    seed = forms.IntegerField(min_value=0, initial=1, help_text="Same scenario and seed, same results.")
    workers = forms.IntegerField(
        min_value=1, max_value=8, initial=1, help_text="Shards simulated side by side by the worker that runs it."
    )


@admin.register(StoredScenario)
class StoredScenarioAdmin(admin.ModelAdmin):
    list_display = ["name", "seed", "updated_at", "last_run"]
    search_fields = ["name"]
    readonly_fields = ["created_at", "updated_at"]
    actions = ["run_scenarios"]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "text":
            field.widget.attrs.update({"rows": 30, "cols": 100, "style": "font-family: monospace"})
        return field

    @admin.display(description="Last run")
    def last_run(self, obj: StoredScenario) -> str:
        run = obj.runs.order_by("-created_at").first()
        if run is None:
            return "-"
        url = reverse("admin:simulation_simulationrun_change", args=[run.pk])
        return format_html('<a href="{}">{} ({})</a>', url, run.get_status_display(), run.created_at.date())

    @admin.action(description="Run the selected scenarios (a Celery worker runs them)")
    def run_scenarios(self, request: HttpRequest, queryset):
        def perform(data: dict) -> None:
            for stored in queryset:
                run = services.stored_scenario_run_start(stored=stored, seed=data["seed"], workers=data["workers"])
                messages.success(request, f"Queued {run}: see Simulation runs.")

        first = queryset.first()
        return admin_action_with_form(
            self,
            request,
            queryset,
            action="run_scenarios",
            title="Run scenarios",
            intro="Each scenario runs in a database of its own; the platform's data is not touched.",
            submit_label="Run",
            form_class=RunForm,
            initial={"seed": first.seed if first else 1, "workers": 1},
            perform=perform,
        )


class ShardInline(ReadOnlyInline):
    model = SimulationShard
    fields = ["index", "status", "days_done", "database", "error"]
    readonly_fields = fields


@admin.register(SimulationRun)
class SimulationRunAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "status", "workers", "payments", "duration", "created_at", "files"]
    list_filter = ["status", "scenario_name"]
    search_fields = ["scenario_name"]
    inlines = [ShardInline]
    fields = [
        "scenario_name",
        "scenario",
        "seed",
        "workers",
        "payments",
        "status",
        "created_at",
        "started_at",
        "finished_at",
        "duration",
        "team_days",
        "files",
        "totals",
        "error",
        "scenario_text",
    ]
    readonly_fields = fields

    @admin.display(description="Duration")
    def duration(self, obj: SimulationRun) -> str:
        seconds = obj.seconds
        return "-" if seconds is None else f"{seconds:,.1f} s"

    @admin.display(description="Files")
    def files(self, obj: SimulationRun) -> str:
        if obj.status != RunStatus.SUCCEEDED or not obj.out_dir:
            return "-"
        links = [
            (reverse("admin:simulation_simulationrun_file", args=[obj.pk, name]), name)
            for name in RUN_FILES
            if (Path(obj.out_dir) / name).is_file()
        ]
        return format_html_join(" · ", '<a href="{}">{}</a>', links) or "-"

    def get_urls(self):
        file_view = self.admin_site.admin_view(self.file_view)
        return [
            path("<int:run_id>/files/<str:name>", file_view, name="simulation_simulationrun_file"),
            *super().get_urls(),
        ]

    def file_view(self, request: HttpRequest, run_id: int, name: str) -> FileResponse:
        """One of the run's files (only the three a run writes, never a path from the request)."""
        run = get_object_or_404(SimulationRun, pk=run_id)
        if not self.has_view_permission(request, run) or name not in RUN_FILES or not run.out_dir:
            raise Http404("No such file.")
        target = Path(run.out_dir) / name
        if not target.is_file():
            raise Http404("The run's files are gone.")
        return FileResponse(target.open("rb"), content_type=RUN_FILES[name], as_attachment=name != "report.html")
