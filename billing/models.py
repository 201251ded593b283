"""What was billed and paid: Stripe customers, invoices and their lines, payments, refunds, the
webhook inbox and the billing audit log. TierLab runs the billing cycle (periods, proration, invoices,
dunning); Stripe holds customers and payment methods and moves the money (DESIGN.md, "Money and
time"). Money is integer cents + currency."""

from __future__ import annotations

from django.db import models

from tiers.models import Subscription, Tier


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

    @property
    def card_brand_name(self) -> str:
        """The brand as people write it ("Mastercard", "American Express"), from Stripe's code."""
        return card_brand_name(self.card_brand)


# Stripe's ``card.brand`` codes, as card networks write their names.
CARD_BRAND_NAMES = {
    "amex": "American Express",
    "diners": "Diners Club",
    "discover": "Discover",
    "jcb": "JCB",
    "mastercard": "Mastercard",
    "unionpay": "UnionPay",
    "visa": "Visa",
}


def card_brand_name(brand: str) -> str:
    return CARD_BRAND_NAMES.get((brand or "").lower(), (brand or "").title() or "Card")


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
    # No index of its own: the (team, -issued_at) index below serves every look-up by team (its first
    # column) and the foreign key's checks; one index fewer to write per invoice (issue 17).
    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="invoices", db_index=False)
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
    # Which tier the line bills, for people reading it: the line carries its own description and
    # amounts, copied at issue time, so nothing about the money depends on the tier row. No database
    # constraint and no index (issue 17: a foreign-key check per line at COMMIT, an index entry per
    # line, for a reference nothing queries lines by): deleting a tier still goes through PROTECT,
    # which Django enforces, and tiers are archived, not deleted, once anyone subscribed.
    tier = models.ForeignKey(
        Tier,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
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
    # Wall-clock time until which a charge request of this attempt may still be in flight (the quiet
    # period after each send, billing.payments): a pending attempt is left alone until then. Kept
    # after a settled outcome that is not the answer to the attempt's only send (a re-send, a webhook
    # or lookup after a timeout), so the attempt is looked up once more for a late second charge.
    quiet_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["invoice", "attempt"], name="billing_payment_invoice_attempt_unique"),
        ]
        indexes = [
            # The billing pass's look-ups of settled attempts to check again: few rows, most are null.
            models.Index(
                fields=["quiet_until"],
                name="billing_payment_quiet_until",
                condition=models.Q(quiet_until__isnull=False),
            ),
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


class ExtraCharge(models.Model):
    """A PaymentIntent that took money TierLab did not ask for, refunded automatically: a second charge
    of one attempt (a request that arrived after its attempt was sent again), a charge of an invoice
    another attempt had paid, or of one voided meanwhile. Unique on the PaymentIntent, so it is
    refunded once whoever finds it (webhook, lookup) and however often. Not a ``Refund``: that money
    was never revenue (analytics count paid invoices and subtract refunds of them)."""

    class Reason(models.TextChoices):
        DUPLICATE = "duplicate", "Second charge of a paid invoice"
        INVOICE_CLOSED = "invoice_closed", "Charge of a void invoice"

    class Status(models.TextChoices):
        PENDING = "pending", "Refund pending"
        REFUNDED = "refunded", "Refunded"
        FAILED = "failed", "Refund failed"

    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="extra_charges")
    stripe_payment_intent_id = models.CharField(max_length=100, unique=True)
    reason = models.CharField(max_length=20, choices=Reason.choices)
    amount_cents = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    stripe_refund_id = models.CharField(max_length=100, blank=True)
    failure_message = models.CharField(max_length=500, blank=True)
    # Like Payment.quiet_until, for the refund request: not sent again before then.
    quiet_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    refunded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"extra charge {self.stripe_payment_intent_id} ({self.status})"

    @property
    def refund_idempotency_key(self) -> str:
        return f"extra_charge:{self.stripe_payment_intent_id}:refund"


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
