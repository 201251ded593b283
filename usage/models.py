"""What you used. (Usage records, rollups and partners arrive with the model API.)"""

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


class UsageRecord(models.Model):
    """One admitted model-API request. Exactly one per (team, request id): a client retry that sends
    the same ``X-Request-Id`` is served again but never counted twice."""

    request_id = models.CharField(max_length=100)
    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="usage_records")
    api_key = models.ForeignKey(
        "accounts.ApiKey", on_delete=models.PROTECT, null=True, blank=True, related_name="usage_records"
    )
    model = models.CharField(max_length=100)
    prompt_tokens = models.PositiveIntegerField()
    completion_tokens = models.PositiveIntegerField()
    total_tokens = models.PositiveIntegerField()
    # The hosting-partner channel the request came through, if any (partners arrive later).
    partner_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "request_id"], name="usage_record_team_request_unique"),
        ]
        indexes = [
            models.Index(fields=["team", "created_at"], name="usage_record_team_time"),
            models.Index(fields=["api_key", "created_at"], name="usage_record_key_time"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.total_tokens} tokens"


class TeamQuotaState(models.Model):
    """The database quota backend's counters: one row per team, every window in one row, so one
    conditional UPDATE checks and consumes all limits at once (see usage/quotas/database.py).

    A window column holds the start of the window its counters belong to; a request in a later window
    starts that counter again from zero within the same UPDATE.
    """

    team = models.OneToOneField("accounts.Team", on_delete=models.CASCADE, primary_key=True, related_name="+")
    minute_start = models.DateTimeField()
    minute_requests = models.BigIntegerField(default=0)
    minute_tokens = models.BigIntegerField(default=0)
    day_start = models.DateTimeField()
    day_requests = models.BigIntegerField(default=0)
    period_start = models.DateTimeField()
    period_tokens = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"quota state of team {self.team_id}"
