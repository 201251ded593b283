"""The hosting-partner usage-reporting API (/api/v1/partner/...)."""

from __future__ import annotations

from django.urls import path

from usage.partner_api import partner_usage_events

urlpatterns: list = [
    path("api/v1/partner/usage-events", partner_usage_events, name="api-partner-usage-events"),
]
