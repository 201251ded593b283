"""The shared kernel's tables: the periodic tasks' heartbeat that /healthz reports, and the feed of cache
invalidations the web processes poll."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Now


class Heartbeat(models.Model):
    """The last time a periodic task ran, per name: proof that beat -> broker -> worker -> DB works.

    One row per name, updated in place; /healthz reports its age.
    """

    name = models.CharField(max_length=64, unique=True)
    beat_at = models.DateTimeField()
    count = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name} at {self.beat_at:%Y-%m-%d %H:%M:%S}"


class CacheInvalidation(models.Model):
    """A change to what web processes cache for the model API's request path (a key, a team's
    entitlements or licence gate, a tier's terms), written by database triggers in the transaction
    that made the change and read by every process's poll (core/invalidation.py). ``team_id`` None:
    every team (a tier or a model changed). Pruned after an hour (``cache_invalidations_prune``)."""

    team_id = models.BigIntegerField(null=True)
    created_at = models.DateTimeField(db_default=Now(), db_index=True)

    def __str__(self) -> str:
        return f"team {self.team_id or 'all'} at {self.created_at}"
