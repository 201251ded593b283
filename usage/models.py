"""What you used: usage records and their rollups, quota state, alerts and refusal counts."""

from __future__ import annotations

from django.db import models

# The request ids of the playground's messages (usage/playground.py): with no key, what tells its usage
# apart from the API's. The model API refuses a client X-Request-Id that starts with it.
PLAYGROUND_REQUEST_ID_PREFIX = "playground-"


class UsageRecord(models.Model):
    """One admitted model-API request. Exactly one per (team, request id) within the request-id
    retention: a client retry that sends the same ``X-Request-Id`` with the same request
    (``request_hash``) is served again but never counted twice; the same id with a different request
    is refused (usage/quotas/base.py). After the retention the id may be used again for a new request,
    which gets a record of its own."""

    request_id = models.CharField(max_length=100)
    # The request id while it is bound to this record (unique per team), NULL once the retention is
    # over (usage.services.usage_request_ids_release): what makes records exactly-once without keeping
    # an id taken forever.
    request_key = models.CharField(max_length=100, null=True, blank=True)
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
    # SHA-256 (hex) of the endpoint path and the canonical JSON body; "" for server-generated ids.
    request_hash = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "request_key"], name="usage_record_team_request_key_unique"),
        ]
        indexes = [
            models.Index(fields=["team", "created_at"], name="usage_record_team_time"),
            models.Index(fields=["api_key", "created_at"], name="usage_record_key_time"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.total_tokens} tokens"

    @property
    def source(self) -> str:
        """Where the request came from: the playground (a person in the browser) or the API (a key)."""
        return "playground" if self.request_id.startswith(PLAYGROUND_REQUEST_ID_PREFIX) else "api"


class QuotaReservation(models.Model):
    """A reservation of the database quota backend, from reserve until its settle, refund or sweep
    (usage/quotas/database.py): it holds its request id (pending: one per team and id) and says what to
    give back if it is never settled. The windows are the ones it was counted in."""

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="+")
    request_id = models.CharField(max_length=100)
    request_hash = models.CharField(max_length=64, blank=True, default="")
    tokens = models.BigIntegerField()
    minute_start = models.DateTimeField()
    day_start = models.DateTimeField()
    period_start = models.DateTimeField(null=True, blank=True)
    reserved_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "request_id"], name="quota_reservation_team_request_unique"),
        ]

    def __str__(self) -> str:
        return f"reservation {self.request_id} of team {self.team_id} ({self.tokens} tokens)"


class UnansweredScript(models.Model):
    """A Redis quota script whose answer never came (usage/quotas/redis.py), kept here until what it did
    is known and made right (usage/unanswered.py). Two kinds:

    - ``consume``: a request the model API answered 503 (no ``X-Request-Id``: nobody can ask for it
      again) whose consume script may have run just before Redis stalled, counting it and streaming its
      usage event. The drain skips that event and gives its counts back; a record stored before this row
      was written is removed by the reconciler. ``payload``: the counters and what each was charged.
    - ``settle``: a stream answered 200 whose settle script may not have run. The sweeper task sends it
      again (a settle runs once) before it refunds any reservation. ``payload``: the reservation and the
      usage event.
    """

    class Kind(models.TextChoices):
        CONSUME = "consume", "consume (answered 503)"
        SETTLE = "settle", "settle (stream answered 200)"

    kind = models.CharField(max_length=10, choices=Kind.choices)
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="+")
    request_id = models.CharField(max_length=100)
    payload = models.JSONField()
    created_at = models.DateTimeField(db_index=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["kind", "team", "request_id"], name="unanswered_script_unique"),
        ]
        indexes = [models.Index(fields=["resolved_at", "kind"], name="unanswered_script_open")]

    def __str__(self) -> str:
        return f"unanswered {self.kind} of {self.request_id} (team {self.team_id})"


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


# --- Rollups and alerts (insight) ---------------------------------------------------------------------


class UsageRollup(models.Model):
    """Usage folded per (granularity, bucket, team, key, model, partner channel): what the dashboard,
    the usage API and the analytics read instead of scanning records.

    Built incrementally from ``UsageRecord`` by a beat task (usage/rollups.py) and rebuildable from the
    records at any time. ``api_key_id`` and ``partner_id`` are plain integers with 0 for "none", so the
    unique key has no NULLs (NULLs are distinct in unique indexes on SQLite and PostgreSQL alike).
    """

    class Granularity(models.TextChoices):
        HOUR = "hour", "Hour"
        DAY = "day", "Day"

    granularity = models.CharField(max_length=4, choices=Granularity.choices)
    bucket_start = models.DateTimeField()
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="+")
    api_key_id = models.BigIntegerField(default=0)
    model = models.CharField(max_length=100)
    partner_id = models.BigIntegerField(default=0)
    requests = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["team", "granularity", "bucket_start", "model", "api_key_id", "partner_id"],
                name="usage_rollup_bucket_unique",
            ),
        ]
        indexes = [models.Index(fields=["granularity", "bucket_start"], name="usage_rollup_time")]

    def __str__(self) -> str:
        return f"{self.granularity} {self.bucket_start:%Y-%m-%d %H:00} team {self.team_id} {self.model}"


class RollupCursor(models.Model):
    """How far the incremental rollup has folded ``UsageRecord`` rows (by id), per rollup name; moved
    in the same transaction as the rollup rows it accounts for, so a re-run never double-counts."""

    name = models.CharField(max_length=32, unique=True)
    last_record_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} at record {self.last_record_id}"


class UsageAlert(models.Model):
    """A threshold a team crossed in a billing period: 80% / 100% of the monthly token quota, or its
    spend cap. At most one per (team, period, kind), so the email goes out exactly once."""

    class Kind(models.TextChoices):
        TOKENS_80 = "tokens_80", "80% of monthly tokens"
        TOKENS_100 = "tokens_100", "100% of monthly tokens"
        SPEND_CAP = "spend_cap", "Spend cap reached"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="usage_alerts")
    period_start = models.DateTimeField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    message = models.CharField(max_length=300)
    created_at = models.DateTimeField()
    emailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["team", "period_start", "kind"], name="usage_alert_once_per_period"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} for team {self.team_id} ({self.period_start:%Y-%m-%d})"


class QuotaRefusalCount(models.Model):
    """Model-API requests refused per (hour, team, tier, refusal code), for operator analytics.

    Counted in-process by the request path and flushed in one upsert every few seconds
    (usage/refusals.py), so a refusal never costs a SQL write of its own; a worker killed between
    flushes loses at most those seconds of counts (these are statistics, not money or usage).
    """

    hour = models.DateTimeField()
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="+")
    tier_slug = models.CharField(max_length=50)
    code = models.CharField(max_length=40)
    count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["hour", "team", "tier_slug", "code"], name="quota_refusal_count_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.count} {self.code} for team {self.team_id} at {self.hour:%Y-%m-%d %H:00}"


# --- The playground -----------------------------------------------------------------------------------


class Conversation(models.Model):
    """A playground chat of one person in one team (usage/playground.py): listed, renamed and deleted
    by that person only, and only while that team is their current one. Its settings are the last ones
    a message was sent with; its messages are metered like API requests (UsageRecord, no key)."""

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey("accounts.User", on_delete=models.CASCADE, related_name="+")
    title = models.CharField(max_length=120)
    model = models.CharField(max_length=100)
    system_prompt = models.TextField(blank=True, default="")
    temperature = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [models.Index(fields=["team", "user", "-updated_at"], name="conversation_owner_recent")]

    def __str__(self) -> str:
        return self.title


class ConversationMessage(models.Model):
    """One turn of a conversation: the person's message, or the model's answer with what it cost. An
    answer's ``request_id`` is its UsageRecord's."""

    class Role(models.TextChoices):
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField()
    request_id = models.CharField(max_length=100, blank=True, default="")
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    stop_reason = models.CharField(max_length=16, blank=True, default="")
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"
