"""What you used: usage records and their rollups, quota alerts, hosting partners and licences."""

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


# --- Hosting partners and licences -------------------------------------------------------------------


class Partner(models.Model):
    """A hosting partner (a cloud serving Llama to its own customers) that shares a percentage of that
    revenue. The percentage lives in ``PartnerShareRate`` rows with effective dates."""

    name = models.CharField(max_length=120)
    slug = models.SlugField(unique=True)
    contact_email = models.EmailField()
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class PartnerKey(models.Model):
    """A partner's key for the usage-reporting API: prefix for lookup + SHA-256 of the secret, like
    ``ApiKey``; shown once."""

    partner = models.ForeignKey(Partner, on_delete=models.CASCADE, related_name="keys")
    name = models.CharField(max_length=100, default="default")
    prefix = models.CharField(max_length=24, unique=True)
    secret_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.partner} key {self.prefix}…"


class PartnerShareRate(models.Model):
    """The revenue share owed by a partner from ``effective_from`` (a date, UTC) until the next rate.
    A change applies from its date on; closed statements are never rewritten."""

    partner = models.ForeignKey(Partner, on_delete=models.CASCADE, related_name="share_rates")
    share_bps = models.PositiveIntegerField(help_text="Basis points: 1500 = 15%.")
    effective_from = models.DateField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["partner", "effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["partner", "effective_from"], name="partner_share_rate_once_per_day"),
            models.CheckConstraint(condition=models.Q(share_bps__lte=10_000), name="partner_share_bps_at_most_100pct"),
        ]

    def __str__(self) -> str:
        return f"{self.partner}: {self.share_bps / 100:g}% from {self.effective_from}"


class PartnerStatement(models.Model):
    """What a partner owes for one calendar month: exactly one per (partner, month), immutable once
    issued. Late events for closed months appear on a later statement as adjustment lines."""

    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="statements")
    month = models.DateField(help_text="The first day of the month the statement covers.")
    issued_at = models.DateTimeField()
    emailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-month", "partner"]
        constraints = [
            models.UniqueConstraint(fields=["partner", "month"], name="partner_statement_once_per_month"),
        ]

    def __str__(self) -> str:
        return f"{self.partner} {self.month:%Y-%m}"


class PartnerStatementLine(models.Model):
    class Kind(models.TextChoices):
        USAGE = "usage", "Usage"
        ADJUSTMENT = "adjustment", "Late events for a closed month"
        DIRECT = "direct", "Direct API traffic through the partner channel"

    statement = models.ForeignKey(PartnerStatement, on_delete=models.CASCADE, related_name="lines")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    usage_month = models.DateField(help_text="The month the events happened in.")
    model = models.CharField(max_length=100)
    currency = models.CharField(max_length=3)
    share_bps = models.PositiveIntegerField()
    events = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    revenue_cents = models.BigIntegerField(default=0)
    share_cents = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.model} {self.usage_month:%Y-%m}"


class PartnerUsageEvent(models.Model):
    """One usage event a partner reported: its own customer and what it billed for it. Accepted once
    per (partner, event id); ``statement`` is the statement it was counted on (None: not yet)."""

    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="usage_events")
    event_id = models.CharField(max_length=100)
    customer = models.CharField(max_length=200)
    model = models.CharField(max_length=100)
    prompt_tokens = models.BigIntegerField()
    completion_tokens = models.BigIntegerField()
    amount_cents = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField()
    statement = models.ForeignKey(
        PartnerStatement, on_delete=models.PROTECT, null=True, blank=True, related_name="events"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["partner", "event_id"], name="partner_usage_event_once"),
        ]
        indexes = [models.Index(fields=["partner", "statement", "occurred_at"], name="partner_event_unstated")]

    def __str__(self) -> str:
        return f"{self.partner_id}:{self.event_id}"


class MonthlyActiveUsers(models.Model):
    """A licensee's reported monthly active users for one calendar month (one report per month; a
    correction replaces it)."""

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="mau_reports")
    month = models.DateField(help_text="The first day of the month.")
    active_users = models.PositiveBigIntegerField()
    reported_at = models.DateTimeField()

    class Meta:
        ordering = ["-month"]
        verbose_name = "monthly active users report"
        constraints = [models.UniqueConstraint(fields=["team", "month"], name="mau_report_once_per_month")]

    def __str__(self) -> str:
        return f"team {self.team_id} {self.month:%Y-%m}: {self.active_users:,}"


class LicenseAgreement(models.Model):
    """The separate licence a licensee above the monthly-active-user threshold needs. Until it is
    granted, the model API refuses the team's requests to models released on or after
    ``required_from`` (``license_required``, 403)."""

    class Status(models.TextChoices):
        REQUIRED = "required", "Required"
        REQUESTED = "requested", "Requested"
        GRANTED = "granted", "Granted"
        REFUSED = "refused", "Refused"

    team = models.OneToOneField("accounts.Team", on_delete=models.PROTECT, related_name="license_agreement")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.REQUIRED)
    required_from = models.DateField(help_text="The first model release date the licence was required for.")
    reported_mau = models.PositiveBigIntegerField(help_text="The monthly active users that triggered it.")
    mau_month = models.DateField(help_text="The month that MAU figure was reported for.")
    monthly_fee_cents = models.PositiveBigIntegerField(default=0)
    currency = models.CharField(max_length=3, default="usd")
    terms = models.TextField(blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey("accounts.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"licence for team {self.team_id} ({self.status})"


class LicenseCheckRun(models.Model):
    """One MAU check per model release date (exactly once, by the unique date)."""

    release_date = models.DateField(unique=True)
    mau_month = models.DateField()
    threshold = models.PositiveBigIntegerField()
    flagged = models.PositiveIntegerField(default=0)
    run_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"licence check for {self.release_date}"
