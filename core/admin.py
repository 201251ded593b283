from __future__ import annotations

from django.contrib import admin

from core.models import Heartbeat


@admin.register(Heartbeat)
class HeartbeatAdmin(admin.ModelAdmin):
    list_display = ["name", "beat_at", "count"]
    readonly_fields = ["name", "beat_at", "count"]

    def has_add_permission(self, request) -> bool:
        return False
