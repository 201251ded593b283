"""Celery tasks for partners (imported by usage/tasks.py, so autodiscovery finds them)."""

from __future__ import annotations
