from django.contrib import admin

from config.admin_base import ReadOnlyAdmin
from usage.models import Heartbeat, UsageRecord


@admin.register(Heartbeat)
class HeartbeatAdmin(admin.ModelAdmin):
    list_display = ["name", "beat_at", "count"]
    readonly_fields = ["name", "beat_at", "count"]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    """Read-only: usage is written by the model API, exactly once per request."""

    list_display = ["created_at", "team", "api_key", "model", "prompt_tokens", "completion_tokens", "total_tokens"]
    list_filter = ["model"]
    search_fields = ["request_id", "team__name", "team__memberships__user__email"]
    list_select_related = ["team", "api_key"]
    date_hierarchy = "created_at"
    show_full_result_count = False  # no COUNT(*) over a large table on every page


# The admin of the other usage topics (each registers its own models).
import usage.admin_insight  # noqa: E402
import usage.admin_licensing  # noqa: E402
import usage.admin_partners  # noqa: E402, F401
