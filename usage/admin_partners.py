"""Admin for partners (imported by usage/admin.py)."""

from __future__ import annotations
