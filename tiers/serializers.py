from rest_framework import serializers

from tiers.models import Subscription, Tier


class TierSerializer(serializers.ModelSerializer):
    models = serializers.SlugRelatedField(source="allowed_models", slug_field="model_id", many=True, read_only=True)
    price = serializers.IntegerField(source="price_cents", help_text="Cents per billing interval.")
    overage_price_per_million_tokens = serializers.IntegerField(
        source="overage_cents_per_million_tokens", allow_null=True, help_text="Cents; null for a hard cap."
    )

    class Meta:
        model = Tier
        fields = [
            "slug",
            "name",
            "description",
            "is_paid",
            "price",
            "currency",
            "billing_interval",
            "trial_days",
            "requests_per_minute",
            "tokens_per_minute",
            "requests_per_day",
            "monthly_tokens",
            "overage_policy",
            "overage_price_per_million_tokens",
            "includes_api_access",
            "models",
        ]
        read_only_fields = fields


class SubscriptionSerializer(serializers.ModelSerializer):
    tier = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    pending_tier = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)

    class Meta:
        model = Subscription
        fields = [
            "tier",
            "status",
            "current_period_start",
            "current_period_end",
            "trial_end",
            "cancel_at_period_end",
            "pending_tier",
        ]
        read_only_fields = fields


class SpendCapSerializer(serializers.Serializer):
    """The subscriber's monthly spend cap on a tier that bills overage: the most the period's bill (tier
    fee + overage) may reach, in cents of the tier's currency. ``amount_cents: null`` removes it."""

    amount_cents = serializers.IntegerField(
        min_value=0, allow_null=True, help_text="Cents of the tier's currency; null removes the cap."
    )
    hard = serializers.BooleanField(
        default=True, help_text="true: refuse requests past the cap (insufficient_quota); false: email only."
    )


class SpendCapStateSerializer(SpendCapSerializer):
    currency = serializers.CharField(read_only=True)
    available = serializers.BooleanField(read_only=True, help_text="Whether the tier bills overage (takes a cap).")
    fee_cents = serializers.IntegerField(read_only=True, help_text="The tier fee: the lowest cap allowed.")
