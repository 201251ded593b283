"""Admin for insight (imported by usage/admin.py)."""

from __future__ import annotations
