"""Who you are: users (email login), teams (the customer) and memberships."""

from __future__ import annotations

import secrets

from django.contrib.auth.models import AbstractUser, BaseUserManager
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.text import slugify


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra_fields) -> User:
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email), **extra_fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra_fields) -> User:
        extra_fields.setdefault("is_staff", False)
        extra_fields.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra_fields)

    def create_superuser(self, email: str, password: str | None = None, **extra_fields) -> User:
        """An operator (``createsuperuser``): like any user, they get a personal team (and, once the
        catalog is seeded, its free subscription: accounts.extensions.team_set_up)."""
        from accounts.services import team_create_personal  # services import this module

        extra_fields.setdefault("is_staff", True)
        extra_fields.setdefault("is_superuser", True)
        if not extra_fields["is_staff"] or not extra_fields["is_superuser"]:
            raise ValueError("A superuser must have is_staff=True and is_superuser=True.")
        user = self._create_user(email, password, **extra_fields)
        team_create_personal(user=user, set_up=True)
        return user


class User(AbstractUser):
    """A person. Email is the login; there is no username."""

    username = None
    email = models.EmailField("email address", unique=True)

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    objects = UserManager()

    class Meta:
        ordering = ["email"]
        constraints = [
            # Emails differing only in case are the same mailbox: one account for them.
            models.UniqueConstraint(Lower("email"), name="accounts_user_email_ci_unique"),
        ]

    def __str__(self) -> str:
        return self.email


def team_slug_new(name: str) -> str:
    """A slug for a new team: its name's, plus a random suffix, so two teams of the same name (two
    "Acme"s, or personal teams of alice@a.example and alice@b.example) never collide and a new slug
    needs no lookup."""
    return f"{slugify(name)[:40].strip('-') or 'team'}-{secrets.token_hex(3)}"


class Team(models.Model):
    """The customer: owns the subscription, API keys, usage, invoices and payment methods."""

    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=60, unique=True, help_text="In the team's page URLs: /teams/<slug>/members/.")
    is_personal = models.BooleanField(
        default=False, help_text="Created for one user at sign-up; that user is its owner."
    )
    members = models.ManyToManyField(User, through="Membership", related_name="teams")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        # Every team has a slug (the invariant its URLs rely on), however the row is made.
        if not self.slug:
            self.slug = team_slug_new(self.name)
        super().save(*args, **kwargs)


class Membership(models.Model):
    """A user's place in a team, with a role. What each role may do is accounts.roles.ROLE_ACTIONS."""

    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        BILLING = "billing", "Billing"
        MEMBER = "member", "Member"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "team"], name="accounts_membership_user_team_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"


def api_key_scopes_default() -> list[str]:
    """What a key may do unless more is asked for: call the model API and read the account API."""
    return [ApiKey.Scope.MODEL, ApiKey.Scope.READ]


class ApiKey(models.Model):
    """A team's API key. The secret is shown once at creation and stored only as a SHA-256 hash.

    Keys are high-entropy random strings, so a fast hash is enough (a slow password hasher would only
    slow every API request); ``prefix`` is the public, unique lookup part, so authentication is one
    indexed lookup plus a constant-time hash comparison.

    ``scopes`` (a list of ``Scope`` values) says what the key may do: ``model`` the model API, ``read``
    the account API's reads, ``manage`` its writes (keys, subscription, spend cap, licence requests,
    MAU reports).
    """

    class Scope(models.TextChoices):
        MODEL = "model", "Model API"
        READ = "read", "Read the account"
        MANAGE = "manage", "Manage the account"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=24, unique=True)
    secret_hash = models.CharField(max_length=64)
    created_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    scopes = models.JSONField(default=api_key_scopes_default, help_text="model, read and/or manage")

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def clean(self) -> None:
        super().clean()
        if not isinstance(self.scopes, list) or not self.scopes:
            raise ValidationError({"scopes": "Give the key at least one scope: model, read or manage."})
        unknown = [scope for scope in self.scopes if scope not in ApiKey.Scope.values]
        if unknown:
            raise ValidationError({"scopes": f"Unknown scope(s): {', '.join(map(str, unknown))}."})
        # Stored once each, in the declared order: lists compare equal and read the same everywhere.
        self.scopes = [scope for scope in ApiKey.Scope.values if scope in self.scopes]

    @property
    def status(self) -> str:
        """ "active", "revoked" or "expired"."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return "expired"
        return "active"


class ApiThrottleCounter(models.Model):
    """One fixed-window request counter of the account API's abuse throttle (accounts.throttling), used
    when the cache cannot increment atomically (the embedded default, Django's DatabaseCache, reads and
    writes). One row per bucket, reset in place when a new window starts, so the table holds one row
    per key, team, user or client address that called recently."""

    bucket = models.CharField(max_length=100, unique=True)
    # Not "window" nor "count": WINDOW is reserved in PostgreSQL, and the upsert is hand-written SQL.
    window_index = models.BigIntegerField(help_text="The window's start in epoch seconds / its length.")
    hits = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.bucket}: {self.hits} in window {self.window_index}"


class AuditEntry(models.Model):
    """Who did what to a team's account, and why: operator actions and the billing engine's decisions.

    Kept in accounts, the lowest app that knows teams, so that every app above it (tiers' spend cap,
    billing's engine and operators) writes to the one trail. ``action`` is one of ``Action``: every
    kind of entry is named here, once.
    """

    class Action(models.TextChoices):
        PAYMENT_METHOD_UPDATED = "payment_method_updated", "Payment method updated"
        CHECKOUT_STARTED = "checkout_started", "Checkout started"
        SUBSCRIBED = "subscribed", "Subscribed"
        TRIAL_STARTED = "trial_started", "Trial started"
        UPGRADED = "upgraded", "Upgraded"
        DOWNGRADE_SCHEDULED = "downgrade_scheduled", "Downgrade scheduled"
        CANCEL_SCHEDULED = "cancel_scheduled", "Cancel scheduled"
        CANCELED_NOW = "canceled_now", "Canceled now"
        CHANGE_UNDONE = "change_undone", "Change undone"
        TIER_SET_BY_OPERATOR = "tier_set_by_operator", "Tier set by operator"
        SUSPENDED = "suspended", "Suspended"
        UNSUSPENDED = "unsuspended", "Suspension lifted"
        CANCEL_APPLIED = "cancel_applied", "Cancel applied"
        DOWNGRADE_APPLIED = "downgrade_applied", "Downgrade applied"
        TRIAL_ENDED = "trial_ended", "Trial ended"
        SPEND_CAP_SET = "spend_cap_set", "Spend cap set"
        SPEND_CAP_REMOVED = "spend_cap_removed", "Spend cap removed"
        LATE_PAYMENT = "late_payment", "Late payment"
        PAYMENT_ON_CLOSED_INVOICE = "payment_on_closed_invoice", "Payment on closed invoice"
        DUPLICATE_CHARGE = "duplicate_charge", "Duplicate charge"
        DOWNGRADED_AFTER_DUNNING = "downgraded_after_dunning", "Downgraded after dunning"
        REFUND = "refund", "Refund"
        REFUND_FAILED = "refund_failed", "Refund failed"
        INVOICE_COMPED = "invoice_comped", "Invoice comped"
        TEAM_CREATED = "team_created", "Team created"
        MEMBER_JOINED = "member_joined", "Member joined"
        MEMBER_REMOVED = "member_removed", "Member removed"
        MEMBER_LEFT = "member_left", "Member left"
        ROLE_CHANGED = "role_changed", "Role changed"
        OWNERSHIP_TRANSFERRED = "ownership_transferred", "Ownership transferred"
        INVITATION_SENT = "invitation_sent", "Invitation sent"
        INVITATION_RESENT = "invitation_resent", "Invitation re-sent"
        INVITATION_REVOKED = "invitation_revoked", "Invitation revoked"

    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    actor = models.ForeignKey("accounts.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    action = models.CharField(max_length=50, choices=Action.choices)
    description = models.CharField(max_length=500)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.get_action_display()}: {self.description}"


INVITATION_DAYS = 7


def invitation_nonce() -> str:
    return secrets.token_urlsafe(12)


class Invitation(models.Model):
    """An invitation to join ``team`` as ``role``, emailed to ``email`` as a signed link that expires
    (accounts.invitations). At most one open invitation per team and address (a unique constraint):
    neither accepted nor revoked. Re-sending draws a new ``nonce``, so only the latest link works."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        REVOKED = "revoked", "Revoked"
        EXPIRED = "expired", "Expired"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Membership.Role.choices, default=Membership.Role.MEMBER)
    invited_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    nonce = models.CharField(max_length=32, default=invitation_nonce, help_text="Part of the signed link.")
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(default=timezone.now)
    send_count = models.PositiveIntegerField(default=1)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                Lower("email"),
                "team",
                condition=models.Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="accounts_invitation_one_open_per_address",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.email} to {self.team} ({self.role})"

    def status_at(self, now) -> str:
        if self.accepted_at is not None:
            return self.Status.ACCEPTED
        if self.revoked_at is not None:
            return self.Status.REVOKED
        if self.expires_at <= now:
            return self.Status.EXPIRED
        return self.Status.PENDING

    @property
    def status(self) -> str:
        return self.status_at(timezone.now())
