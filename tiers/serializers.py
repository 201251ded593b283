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
            "models",
        ]
        read_only_fields = fields


class SubscriptionSerializer(serializers.ModelSerializer):
    tier = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    pending_tier = serializers.SlugRelatedField(slug_field="slug", read_only=True)

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
