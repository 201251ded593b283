"""Licensees' monthly-active-user reports (/api/v1/...)."""

from __future__ import annotations

urlpatterns: list = []
