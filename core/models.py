"""The shared kernel's one table: the periodic tasks' heartbeat that /healthz reports."""

from __future__ import annotations

from django.db import models


class Heartbeat(models.Model):
    """The last time a periodic task ran, per name: proof that beat -> broker -> worker -> DB works.

    One row per name, updated in place; /healthz reports its age.
    """

    name = models.CharField(max_length=64, unique=True)
    beat_at = models.DateTimeField()
    count = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name} at {self.beat_at:%Y-%m-%d %H:%M:%S}"
