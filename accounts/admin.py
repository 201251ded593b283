from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import UserChangeForm, UserCreationForm
from django.urls import reverse
from django.utils.html import format_html_join

from accounts import services
from accounts.models import ApiKey, Membership, Team, User


class EmailUserCreationForm(UserCreationForm):
    class Meta:
        model = User
        fields = ("email",)


class EmailUserChangeForm(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user", "team"]


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = EmailUserChangeForm
    add_form = EmailUserCreationForm
    ordering = ["email"]
    list_display = ["email", "first_name", "last_name", "is_staff", "is_active", "date_joined"]
    list_filter = ["is_staff", "is_superuser", "is_active"]
    search_fields = ["email", "first_name", "last_name"]
    inlines = [MembershipInline]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "is_personal", "current_tier", "created_at"]
    list_filter = ["is_personal"]
    search_fields = ["name", "memberships__user__email"]
    inlines = [MembershipInline]
    readonly_fields = ["customer_records"]

    @admin.display(description="Customer records")
    def customer_records(self, team: Team) -> str:
        """Links to everything an operator looks up for a customer, each filtered to this team."""
        if team.pk is None:
            return "—"
        links = [
            ("Subscription", "admin:tiers_subscription_changelist"),
            ("Invoices", "admin:billing_invoice_changelist"),
            ("Billing audit trail", "admin:accounts_auditentry_changelist"),
            ("API keys", "admin:accounts_apikey_changelist"),
            ("Usage records", "admin:usage_usagerecord_changelist"),
        ]
        return format_html_join(
            " · ", '<a href="{}?team__id__exact={}">{}</a>', ((reverse(url), team.pk, label) for label, url in links)
        )

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("subscriptions__tier")

    @admin.display(description="Current tier")
    def current_tier(self, team: Team) -> str:
        current = [s for s in team.subscriptions.all() if s.status != "canceled"]
        return current[0].tier.name if current else "—"


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Operators see keys (never secrets: only the prefix exists) and can revoke them."""

    list_display = [
        "name", "prefix", "team", "scopes", "status", "created_at", "last_used_at", "expires_at", "revoked_at",
    ]  # fmt: skip
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "team__name", "team__memberships__user__email"]
    list_select_related = ["team"]
    readonly_fields = [
        "team", "name", "prefix", "scopes", "created_by", "created_at", "expires_at", "last_used_at", "revoked_at",
    ]  # fmt: skip
    exclude = ["secret_hash"]
    actions = ["revoke_keys"]

    def has_add_permission(self, request) -> bool:
        return False  # keys are created by their team (page, API, command): the secret is shown once there

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # usage records refer to keys: revoke instead

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request, queryset) -> None:
        for key in queryset:
            services.api_key_revoke(key=key)
        self.message_user(request, f"Revoked {queryset.count()} key(s); they are refused within seconds.")
