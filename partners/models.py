"""Hosting partners (keys, share rates, usage events, statements) and licence agreements (MAU reports,
licence checks)."""

from __future__ import annotations

from django.db import models


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


class PartnerChannelKey(models.Model):
    """An API key issued for a hosting partner's channel: the team's direct traffic through it is
    attributed to that partner (``UsageRecord.partner_id``, rollups, statements' direct lines). Recorded
    here, pointing down at ``accounts.ApiKey``, so accounts knows nothing of partners."""

    api_key = models.OneToOneField("accounts.ApiKey", on_delete=models.CASCADE, related_name="partner_channel")
    partner = models.ForeignKey(Partner, on_delete=models.PROTECT, related_name="channel_keys")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.api_key} via {self.partner}"


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
