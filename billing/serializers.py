from rest_framework import serializers

from billing.models import Invoice, InvoiceLine
from tiers.models import Tier
from tiers.serializers import SubscriptionSerializer


class InvoiceLineSerializer(serializers.ModelSerializer):
    amount = serializers.IntegerField(source="amount_cents", help_text="Cents; credits are negative.")
    unit_amount = serializers.IntegerField(
        source="unit_amount_cents", help_text="Cents per unit (per million tokens for overage)."
    )

    class Meta:
        model = InvoiceLine
        fields = ["kind", "description", "amount", "quantity", "unit_amount", "period_start", "period_end"]
        read_only_fields = fields


class InvoiceSerializer(serializers.ModelSerializer):
    total = serializers.IntegerField(source="total_cents", help_text="Sum of the lines, in cents.")
    lines = InvoiceLineSerializer(many=True, read_only=True)

    class Meta:
        model = Invoice
        fields = [
            "number",
            "kind",
            "status",
            "currency",
            "total",
            "period_start",
            "period_end",
            "issued_at",
            "paid_at",
            "lines",
        ]
        read_only_fields = fields


class SubscriptionRequestSerializer(serializers.Serializer):
    """Exactly one of: ``tier`` (with an optional ``payment_method``), ``cancel: true``, ``resume: true``."""

    tier = serializers.SlugRelatedField(
        slug_field="slug",
        queryset=Tier.objects.selectable(public_only=True),
        required=False,
        help_text="Slug of a public tier to subscribe or change to.",
        error_messages={"does_not_exist": "There is no tier '{value}' open to subscription."},
    )
    payment_method = serializers.RegexField(
        r"^pm_[A-Za-z0-9_]+$",
        required=False,
        allow_null=True,
        max_length=100,
        help_text="A Stripe payment method, e.g. a test one such as pm_card_visa. Omit to use the card on file.",
    )
    cancel = serializers.BooleanField(required=False, help_text="true: cancel at the end of the period.")
    resume = serializers.BooleanField(required=False, help_text="true: undo a scheduled cancel or downgrade.")

    def validate_cancel(self, value: bool) -> bool:
        if not value:
            raise serializers.ValidationError("Send true to cancel, or leave it out.")
        return value

    def validate_resume(self, value: bool) -> bool:
        if not value:
            raise serializers.ValidationError("Send true to resume, or leave it out.")
        return value

    def validate(self, attrs: dict) -> dict:
        actions = [name for name in ("tier", "cancel", "resume") if name in attrs]
        if len(actions) != 1:
            raise serializers.ValidationError(
                {"tier": "Send exactly one of: tier (with payment_method), cancel: true, or resume: true."}
            )
        if attrs.get("payment_method") and "tier" not in attrs:
            raise serializers.ValidationError({"payment_method": "payment_method goes with tier."})
        return attrs


class SubscriptionChangeSerializer(SubscriptionSerializer):
    """The subscription after a change, what the change was, and the invoice it charged (if any)."""

    change = serializers.CharField(
        help_text="subscribed, trial_started, upgraded, downgrade_scheduled, cancel_scheduled or resumed."
    )
    invoice = InvoiceSerializer(allow_null=True, help_text="The invoice charged by this change, if any.")

    class Meta(SubscriptionSerializer.Meta):
        fields = [*SubscriptionSerializer.Meta.fields, "change", "invoice"]
        read_only_fields = fields
