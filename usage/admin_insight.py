"""Admin for insight (imported by usage/admin.py): rollups, the fold cursor and usage alerts.

Read-only: rollups are derived from records (rebuild them with usage.rollups.usage_rollup_rebuild),
alerts are created by the evaluation task, once per threshold per period.
"""

from __future__ import annotations

from django.contrib import admin

from config.admin_base import ReadOnlyAdmin
from usage.models import RollupCursor, UsageAlert, UsageRollup


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
