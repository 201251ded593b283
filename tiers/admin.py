from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Count, Q
from django.http import HttpRequest
from django.utils.html import format_html

from core.money import MinorUnitsField
from core.templatetags.tier_format import limit, money
from tiers import services
from tiers.models import LanguageModel, Tier


@admin.register(LanguageModel)
class LanguageModelAdmin(admin.ModelAdmin):
    list_display = ["model_id", "display_name", "owned_by", "context_window", "released_on", "is_active"]
    list_filter = ["is_active", "owned_by"]
    search_fields = ["model_id", "display_name"]


@admin.register(Tier)
class TierAdmin(admin.ModelAdmin):
    # Fits a 1280 px screen beside the filters: the three rate limits share a column, the billing
    # interval is a filter (and on each tier's page), the yes/no columns have short titles.
    list_display = [
        "name",
        "slug",
        "price",
        "rate_limits",
        "monthly",
        "overage",
        "api",
        "public",
        "archived",
        "subscriber_count",
    ]
    list_filter = [
        "is_archived",
        "is_public",
        "includes_api_access",
        "is_paid",
        "overage_policy",
        "billing_interval",
        "currency",
    ]
    search_fields = ["name", "slug", "description"]
    prepopulated_fields = {"slug": ("name",)}
    filter_horizontal = ["allowed_models"]
    readonly_fields = ["created_at", "updated_at"]
    actions = ["archive_tiers", "unarchive_tiers"]
    fieldsets = (
        (None, {"fields": ("name", "slug", "description", "sort_order", "is_public", "is_archived")}),
        ("Price", {"fields": ("is_paid", "price_cents", "currency", "billing_interval", "trial_days")}),
        (
            "Limits (empty means unlimited)",
            {"fields": ("requests_per_minute", "tokens_per_minute", "requests_per_day", "monthly_tokens")},
        ),
        ("Past the monthly quota", {"fields": ("overage_policy", "overage_cents_per_million_tokens")}),
        ("Models and access", {"fields": ("allowed_models", "includes_api_access")}),
        ("History", {"fields": ("created_at", "updated_at")}),
    )

    # Operators type prices in dollars (the currency's major unit); they are stored in cents. The form
    # fields keep the model's names, so the model's own validation (tiers.models.Tier.clean) still
    # reports on them.
    money_fields = {
        "price_cents": ("Price", "Fee per billing interval in the tier's currency, e.g. 20.00. 0 for a free tier."),
        "overage_cents_per_million_tokens": (
            "Overage price per million tokens",
            "In the tier's currency, e.g. 0.60; only for tiers that bill overage.",
        ),
    }

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name in self.money_fields:
            label, help_text = self.money_fields[db_field.name]
            return MinorUnitsField(
                label=label,
                help_text=help_text,
                required=not db_field.blank,
                min_cents=0,
                max_cents=2**31 - 1,  # the column is a PositiveIntegerField
            )
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(_subscribers=Count("subscriptions", filter=~Q(subscriptions__status="canceled")))
        )

    @admin.display(description="Price", ordering="price_cents")
    def price(self, tier: Tier) -> str:
        return money(tier.price_cents, tier.currency) if tier.is_paid else "Free"

    @admin.display(description="Rate limits", ordering="requests_per_minute")
    def rate_limits(self, tier: Tier) -> str:
        return format_html(
            "{} req/min<br>{} tok/min<br>{} req/day",
            limit(tier.requests_per_minute),
            limit(tier.tokens_per_minute),
            limit(tier.requests_per_day),
        )

    @admin.display(description="API", boolean=True, ordering="includes_api_access")
    def api(self, tier: Tier) -> bool:
        return tier.includes_api_access

    @admin.display(description="Public", boolean=True, ordering="is_public")
    def public(self, tier: Tier) -> bool:
        return tier.is_public

    @admin.display(description="Archived", boolean=True, ordering="is_archived")
    def archived(self, tier: Tier) -> bool:
        return tier.is_archived

    @admin.display(description="Tokens/month", ordering="monthly_tokens")
    def monthly(self, tier: Tier) -> str:
        return limit(tier.monthly_tokens)

    @admin.display(description="Overage")
    def overage(self, tier: Tier) -> str:
        if not tier.bills_overage:
            return "Hard cap"
        return f"{money(tier.overage_cents_per_million_tokens, tier.currency)}/M"

    @admin.display(description="Subscribers", ordering="_subscribers")
    def subscriber_count(self, tier: Tier) -> int:
        return tier._subscribers

    def has_delete_permission(self, request: HttpRequest, obj: Tier | None = None) -> bool:
        # A tier anyone has subscribed to is history (invoices, usage): archive it instead. The bulk
        # "delete selected" action is refused by Django itself, since subscriptions PROTECT tiers.
        if obj is not None and services.tier_has_subscribers(tier=obj):
            return False
        return super().has_delete_permission(request, obj)

    @admin.action(description="Archive selected tiers (keep subscribers, hide from new sign-ups)")
    def archive_tiers(self, request: HttpRequest, queryset) -> None:
        for tier in queryset:
            services.tier_archive(tier=tier)
        self.message_user(request, f"Archived {queryset.count()} tier(s).", messages.SUCCESS)

    @admin.action(description="Unarchive selected tiers")
    def unarchive_tiers(self, request: HttpRequest, queryset) -> None:
        for tier in queryset:
            services.tier_unarchive(tier=tier)
        self.message_user(request, f"Unarchived {queryset.count()} tier(s).", messages.SUCCESS)
