"""What you are entitled to: the model catalog, the tier catalog and each team's subscription."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

from core.periods import subscription_period_at

if TYPE_CHECKING:
    from datetime import datetime


class LanguageModel(models.Model):
    """A model served by the (simulated) model API, e.g. ``Llama-3.3-70B-Instruct``."""

    model_id = models.CharField(
        "model id",
        max_length=100,
        unique=True,
        validators=[RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", "Letters, digits, '.', '_' and '-' only.")],
    )
    display_name = models.CharField(max_length=120)
    owned_by = models.CharField(max_length=60, default="Meta")
    context_window = models.PositiveIntegerField(default=128_000)
    released_on = models.DateField(help_text="Release date; licence checks are run per release date.")
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["released_on", "model_id"]
        verbose_name = "language model"

    def __str__(self) -> str:
        return self.model_id


class TierQuerySet(models.QuerySet):
    def selectable(self, *, public_only: bool = False) -> TierQuerySet:
        """Tiers that can be chosen now (Tier.selectable_refusal is the same rule for one tier): never an
        archived one (it keeps its subscribers, but nobody new moves to it); with ``public_only``, only
        those open to customers (sign-up pages, checkout, the account API), not Enterprise-style tiers
        that operators and commands assign."""
        tiers = self.filter(is_archived=False)
        return tiers.filter(is_public=True) if public_only else tiers


class Tier(models.Model):
    """An access tier in the catalog. Limits left empty are unlimited.

    Prices are integer minor units (cents) of ``currency``. A price change applies to periods that
    start after it; issued invoices copy their amounts and never read them back from here.
    """

    class Interval(models.TextChoices):
        MONTH = "month", "Monthly"
        YEAR = "year", "Yearly"

    class OveragePolicy(models.TextChoices):
        BLOCK = "block", "Hard cap (refuse past the monthly quota)"
        BILL = "bill", "Bill overage per million tokens"

    slug = models.SlugField(unique=True, help_text="Stable identifier used by the API and URLs.")
    name = models.CharField(max_length=80)
    description = models.TextField(blank=True)
    sort_order = models.PositiveSmallIntegerField(default=100)

    is_paid = models.BooleanField(
        "paid tier", default=True, help_text="Paid tiers charge the price every interval; free tiers cost nothing."
    )
    price_cents = models.PositiveIntegerField(
        "price (cents)", default=0, help_text="Fee per billing interval, in cents. 0 for a free tier."
    )
    currency = models.CharField(
        max_length=3,
        default="usd",
        validators=[RegexValidator(r"^[a-z]{3}$", "A three-letter ISO 4217 code in lower case, e.g. usd.")],
    )
    billing_interval = models.CharField(max_length=8, choices=Interval.choices, default=Interval.MONTH)
    trial_days = models.PositiveSmallIntegerField(default=0)

    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    requests_per_day = models.PositiveIntegerField(null=True, blank=True)
    monthly_tokens = models.PositiveBigIntegerField(
        "included tokens per month", null=True, blank=True, help_text="Empty means unlimited."
    )
    overage_policy = models.CharField(max_length=8, choices=OveragePolicy.choices, default=OveragePolicy.BLOCK)
    overage_cents_per_million_tokens = models.PositiveIntegerField(
        "overage price (cents per million tokens)",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
    )
    allowed_models = models.ManyToManyField(LanguageModel, related_name="tiers", blank=True)
    # A consumer tier (the paid assistant subscription) chats in the playground only: its teams cannot
    # create API keys and the model API refuses keys they already had (403 api_access_not_included).
    includes_api_access = models.BooleanField(
        "includes API access",
        default=True,
        help_text="Teams on this tier may create API keys and call the model API. Off: the playground only.",
    )

    is_public = models.BooleanField(default=True, help_text="Listed on the pricing page and open to sign-up.")
    is_archived = models.BooleanField(
        default=False, help_text="Archived tiers keep their subscribers but cannot be chosen any more."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TierQuerySet.as_manager()

    class Meta:
        ordering = ["sort_order", "price_cents", "slug"]
        constraints = [
            models.CheckConstraint(
                # isnull too: a CHECK on NULL > 0 is "unknown", which SQL lets through.
                condition=Q(overage_policy="block")
                | Q(overage_cents_per_million_tokens__isnull=False, overage_cents_per_million_tokens__gt=0),
                name="tiers_tier_overage_priced",
            ),
            models.CheckConstraint(
                condition=Q(is_paid=True, price_cents__gt=0) | Q(is_paid=False, price_cents=0),
                name="tiers_tier_paid_iff_priced",
            ),
            models.CheckConstraint(
                condition=Q(overage_policy="block") | Q(is_paid=True),
                name="tiers_tier_overage_needs_paid",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_free(self) -> bool:
        return not self.is_paid

    @property
    def bills_overage(self) -> bool:
        return self.overage_policy == self.OveragePolicy.BILL

    def selectable_refusal(self, *, public_only: bool = False) -> str:
        """Why this tier cannot be chosen now, "" if it can: TierQuerySet.selectable for one tier in
        hand (tiers.services.tier_selectable_check raises it as TierUnavailable)."""
        if self.is_archived:
            return f"Tier '{self.slug}' is archived and cannot be chosen."
        if public_only and not self.is_public:
            return f"Tier '{self.slug}' is not available for sign-up."
        return ""

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}

        def add(field: str, message: str) -> None:
            errors.setdefault(field, []).append(message)

        if self.is_paid and not self.price_cents:
            add("price_cents", "A paid tier needs a price greater than zero.")
        if not self.is_paid and self.price_cents:
            add("price_cents", "A free tier has no price: set it to 0, or mark the tier as paid.")
        if not self.is_paid and self.trial_days:
            add("trial_days", "A free tier has no trial: it is free already.")
        if self.bills_overage:
            if not self.is_paid:
                add("overage_policy", "Only a paid tier can bill overage; a free tier is hard-capped.")
            if not self.overage_cents_per_million_tokens:
                add("overage_cents_per_million_tokens", "A tier that bills overage needs an overage price.")
            if self.monthly_tokens is None:
                add("monthly_tokens", "Overage is billed past the included tokens: set how many are included.")
        elif self.overage_cents_per_million_tokens:
            add(
                "overage_cents_per_million_tokens",
                "Only a tier that bills overage has an overage price: leave it empty or choose billing.",
            )
        if self.currency:
            self.currency = self.currency.lower()
        if errors:
            raise ValidationError(errors)


class SubscriptionQuerySet(models.QuerySet):
    def current(self) -> SubscriptionQuerySet:
        """Not canceled: what teams are on now. A team has at most one (the one-current constraint below);
        chain ``.filter(team=...)`` and ``.first()`` for a team's."""
        return self.exclude(status=Subscription.Status.CANCELED)

    def get_locked(self, pk: int) -> Subscription:
        """Subscription ``pk`` with its tiers, its row locked until the transaction ends. OF self: the
        subscription row only, not the tiers joined in (PostgreSQL would lock those too, serialising every
        change on a tier, and refuses FOR UPDATE on the nullable side of the pending_tier outer join)."""
        return self.select_for_update(of=("self",)).select_related("tier", "pending_tier").get(pk=pk)


class Subscription(models.Model):
    """A team's subscription to a tier. At most one current (not canceled) subscription per team."""

    class Status(models.TextChoices):
        TRIALING = "trialing", "Trialing"
        ACTIVE = "active", "Active"
        PAST_DUE = "past_due", "Past due"
        CANCELED = "canceled", "Canceled"
        SUSPENDED = "suspended", "Suspended"

    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="subscriptions")
    tier = models.ForeignKey(Tier, on_delete=models.PROTECT, related_name="subscriptions")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    # Periods are computed from the anchor (see core/periods.py), so month-end clamping never drifts.
    billing_anchor = models.DateTimeField()
    current_period_start = models.DateTimeField()
    current_period_end = models.DateTimeField()
    trial_end = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    # Indexed only where set (Meta.indexes): most subscriptions have none, and the period close's
    # advance rewrites every row it closes (a non-HOT update), which wrote a NULL entry each (issue 17).
    pending_tier = models.ForeignKey(
        Tier,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="pending_subscriptions",
        db_index=False,
    )
    canceled_at = models.DateTimeField(null=True, blank=True)
    # Set when a charge fails; cleared when an invoice is paid. The model API refuses a subscription
    # past due for longer than TIERLAB_PAST_DUE_GRACE_DAYS.
    past_due_since = models.DateTimeField(null=True, blank=True)
    # The subscriber's own monthly spend cap on tiers that bill overage: the most the period's bill
    # (tier fee + overage) may reach. Hard: the model API refuses with insufficient_quota once the
    # overage would pass it; notify: an alert email only. Null: no cap.
    spend_cap_cents = models.PositiveBigIntegerField(null=True, blank=True)
    spend_cap_hard = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = SubscriptionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["team"],
                condition=~Q(status="canceled"),
                name="tiers_subscription_one_current_per_team",
            ),
            models.CheckConstraint(
                condition=Q(current_period_end__gt=models.F("current_period_start")),
                name="tiers_subscription_period_positive",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "current_period_end"]),
            # tier.pending_subscriptions (tiers.services.tier_has_subscribers) and the foreign key's
            # checks look up a given tier: never NULL.
            models.Index(
                fields=["pending_tier"],
                name="tiers_subscription_pending",
                condition=Q(pending_tier__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.team} on {self.tier} ({self.status})"

    def period_at(self, now: datetime) -> tuple[datetime, datetime]:
        """The billing period at ``now`` (a trial's own period while it runs): core.periods.subscription_period_at."""
        return subscription_period_at(
            anchor=self.billing_anchor,
            interval=self.tier.billing_interval,
            period_start=self.current_period_start,
            period_end=self.current_period_end,
            now=now,
        )

    def scheduled_change_clear(self) -> list[str]:
        """Drop a scheduled downgrade or cancel, if any: the subscription renews on its tier. Returns the
        fields it set, for ``save(update_fields=[*fields, ...])``.

        The period close applies a scheduled change in SQL and resets ``pending_tier`` and
        ``cancel_at_period_end`` there (billing/close.py, _periods_advance); it keeps ``canceled_at``, as
        the date of the cancel that took effect. Here the change is dropped, so its date goes too."""
        self.pending_tier = None
        self.cancel_at_period_end = False
        self.canceled_at = None
        return ["pending_tier", "cancel_at_period_end", "canceled_at"]
