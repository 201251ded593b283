"""Usage in the admin: records, quota state, rollups, alerts and refusal counts (read-only)."""

from __future__ import annotations

from django.contrib import admin

from core.admin_base import ReadOnlyAdmin
from usage.models import RollupCursor, UnansweredScript, UsageAlert, UsageRecord, UsageRollup


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    """Read-only: usage is written by the model API, exactly once per request."""

    list_display = [
        "created_at",
        "team",
        "api_key",
        "source",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
    ]
    list_filter = ["model"]
    search_fields = ["request_id", "team__name", "team__memberships__user__email"]
    list_select_related = ["team", "api_key"]
    date_hierarchy = "created_at"
    show_full_result_count = False  # no COUNT(*) over a large table on every page

    @admin.display(description="Source")
    def source(self, record: UsageRecord) -> str:
        return "Playground" if record.source == "playground" else "API"


@admin.register(UsageRollup)
class UsageRollupAdmin(ReadOnlyAdmin):
    list_display = [
        "bucket_start",
        "granularity",
        "team",
        "model",
        "api_key_id",
        "partner_id",
        "requests",
        "total_tokens",
    ]
    list_filter = ["granularity", "model"]
    search_fields = ["team__name"]
    list_select_related = ["team"]
    date_hierarchy = "bucket_start"
    show_full_result_count = False  # no COUNT(*) over a large table on every page


@admin.register(RollupCursor)
class RollupCursorAdmin(ReadOnlyAdmin):
    list_display = ["name", "last_record_id", "updated_at"]


@admin.register(UsageAlert)
class UsageAlertAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "team", "kind", "period_start", "emailed_at", "message"]
    list_filter = ["kind"]
    search_fields = ["team__name", "team__memberships__user__email"]
    list_select_related = ["team"]
    date_hierarchy = "created_at"


@admin.register(UnansweredScript)
class UnansweredScriptAdmin(ReadOnlyAdmin):
    """Redis scripts whose answer never came, and when the sweeper or the drain made them right."""

    list_display = ["created_at", "kind", "team", "request_id", "resolved_at"]
    list_filter = ["kind", ("resolved_at", admin.EmptyFieldListFilter)]
    search_fields = ["request_id"]
    list_select_related = ["team"]
