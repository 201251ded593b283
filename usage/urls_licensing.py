"""Licensees' monthly-active-user reports and licence agreement (/api/v1/...)."""

from __future__ import annotations

from django.urls import path

from usage.api_licensing import LicenseApi, LicenseRequestApi, MauReportApi

urlpatterns: list = [
    path("api/v1/mau", MauReportApi.as_view(), name="api-mau"),
    path("api/v1/license", LicenseApi.as_view(), name="api-license"),
    path("api/v1/license/request", LicenseRequestApi.as_view(), name="api-license-request"),
]
