"""The hosting-partner usage-reporting API (/api/v1/partner/...)."""

from __future__ import annotations

urlpatterns: list = []
