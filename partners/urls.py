"""Partners' and licensees' API routes (/api/v1/partner/..., /api/v1/mau, /api/v1/license...)."""

from __future__ import annotations

from django.urls import path

from partners.api import LicenseApi, LicenseRequestApi, MauReportApi, partner_usage_events

urlpatterns: list = [
    path("api/v1/partner/usage-events", partner_usage_events, name="api-partner-usage-events"),
    path("api/v1/mau", MauReportApi.as_view(), name="api-mau"),
    path("api/v1/license", LicenseApi.as_view(), name="api-license"),
    path("api/v1/license/request", LicenseRequestApi.as_view(), name="api-license-request"),
]
