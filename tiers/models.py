"""What you are entitled to: the model catalog, the tier catalog and each team's subscription."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q


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

    is_public = models.BooleanField(default=True, help_text="Listed on the pricing page and open to sign-up.")
    is_archived = models.BooleanField(
        default=False, help_text="Archived tiers keep their subscribers but cannot be chosen any more."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

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
    # Periods are computed from the anchor (see tiers/periods.py), so month-end clamping never drifts.
    billing_anchor = models.DateTimeField()
    current_period_start = models.DateTimeField()
    current_period_end = models.DateTimeField()
    trial_end = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    pending_tier = models.ForeignKey(
        Tier, on_delete=models.PROTECT, null=True, blank=True, related_name="pending_subscriptions"
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
        indexes = [models.Index(fields=["status", "current_period_end"])]

    def __str__(self) -> str:
        return f"{self.team} on {self.tier} ({self.status})"


# --- Billing ------------------------------------------------------------------------------------------
# TierLab runs the billing cycle (periods, proration, invoices, dunning); Stripe holds customers and
# payment methods and moves the money (DESIGN.md, "Money and time"). Money is integer cents + currency.


class BillingCustomer(models.Model):
    """The team's Stripe customer and its default payment method (a card on file)."""

    team = models.OneToOneField("accounts.Team", on_delete=models.PROTECT, related_name="billing_customer")
    stripe_customer_id = models.CharField(max_length=100, unique=True)
    default_payment_method_id = models.CharField(max_length=100, blank=True)
    card_brand = models.CharField(max_length=20, blank=True)
    card_last4 = models.CharField(max_length=4, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.team} ({self.stripe_customer_id})"


class Invoice(models.Model):
    """A TierLab invoice. Immutable once issued (open): amounts are copied from the tier at issue time,
    so a later price change never rewrites it. ``billing_key`` makes every invoice exactly-once:
    ``renewal:<subscription>:<period start>``, ``initial:<subscription>:<period start>``,
    ``proration:<subscription>:<change time>``."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        OPEN = "open", "Open"
        PAID = "paid", "Paid"
        VOID = "void", "Void"
        UNCOLLECTIBLE = "uncollectible", "Uncollectible"

    class Kind(models.TextChoices):
        INITIAL = "initial", "First period"
        RENEWAL = "renewal", "Renewal"
        PRORATION = "proration", "Tier change (prorated)"

    number = models.CharField(max_length=32, unique=True, null=True, blank=True)
    billing_key = models.CharField(max_length=120, unique=True)
    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="invoices")
    subscription = models.ForeignKey(Subscription, on_delete=models.PROTECT, related_name="invoices")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    currency = models.CharField(max_length=3)
    total_cents = models.BigIntegerField(help_text="Sum of the lines, in cents.")
    # The service period the invoice bills in advance (the fee's period).
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    issued_at = models.DateTimeField()
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    # Dunning: when the next charge attempt is due (null: none scheduled).
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    attempt_count = models.PositiveSmallIntegerField(default=0)
    memo = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-issued_at", "-id"]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"]),
            models.Index(fields=["team", "-issued_at"]),
        ]

    def __str__(self) -> str:
        return self.number or f"invoice {self.pk}"


class InvoiceLine(models.Model):
    class Kind(models.TextChoices):
        FEE = "fee", "Tier fee"
        PRORATION_CREDIT = "proration_credit", "Unused time (credit)"
        PRORATION_CHARGE = "proration_charge", "Remaining time"
        OVERAGE = "overage", "Overage"
        ADJUSTMENT = "adjustment", "Adjustment"

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    description = models.CharField(max_length=200)
    tier = models.ForeignKey(Tier, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    quantity = models.BigIntegerField(default=1, help_text="Units: 1 for fees, tokens for overage.")
    unit_amount_cents = models.BigIntegerField(help_text="Per unit; per million tokens for overage.")
    amount_cents = models.BigIntegerField(help_text="Signed: credits are negative.")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.description


class Payment(models.Model):
    """One attempt to charge an invoice through a Stripe PaymentIntent. The row is written (pending)
    before Stripe is called, so a crash between the charge and the local update is found again by the
    next pass (by the PaymentIntent's metadata) instead of charging twice."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        REQUIRES_ACTION = "requires_action", "Requires action"
        CANCELED = "canceled", "Canceled"

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="payments")
    attempt = models.PositiveSmallIntegerField()
    idempotency_key = models.CharField(max_length=100, unique=True)
    stripe_payment_intent_id = models.CharField(max_length=100, unique=True, null=True, blank=True)
    amount_cents = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    failure_code = models.CharField(max_length=100, blank=True)
    failure_message = models.CharField(max_length=500, blank=True)
    amount_refunded_cents = models.BigIntegerField(default=0)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["invoice", "attempt"], name="tiers_payment_invoice_attempt_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.invoice} attempt {self.attempt} ({self.status})"


class Refund(models.Model):
    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="refunds")
    idempotency_key = models.CharField(max_length=100, unique=True)
    stripe_refund_id = models.CharField(max_length=100, unique=True, null=True, blank=True)
    amount_cents = models.BigIntegerField()
    reason = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=20, default="pending")
    created_by = models.ForeignKey("accounts.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"refund of {self.amount_cents} on {self.payment}"


class StripeEvent(models.Model):
    """The webhook inbox: every verified event stored once (unique event id) before it is processed."""

    event_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    processing_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class BillingAuditEntry(models.Model):
    """Who did what to a customer's billing, and why: operator actions and the engine's decisions."""

    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    actor = models.ForeignKey("accounts.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    action = models.CharField(max_length=50)
    description = models.CharField(max_length=500)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "billing audit entries"

    def __str__(self) -> str:
        return f"{self.action}: {self.description}"
