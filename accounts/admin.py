from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import UserChangeForm, UserCreationForm
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html_join

from accounts import services, teams
from accounts.models import ApiKey, Invitation, Membership, Team, User
from core.errors import ApplicationError


class EmailUserCreationForm(UserCreationForm):
    class Meta:
        model = User
        fields = ("email",)


class EmailUserChangeForm(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


class UserMembershipInline(admin.TabularInline):
    """A user's teams and roles, read-only: roles change on the team's page, through the audited service."""

    model = Membership
    extra = 0
    fields = ["team", "role", "created_at"]
    readonly_fields = fields
    can_delete = False
    verbose_name_plural = "teams (change roles on the team's page)"

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # people join through invitations


class MembershipFormSet(BaseInlineFormSet):
    def clean(self):
        super().clean()
        kept = [f for f in self.forms if getattr(f, "cleaned_data", None) and not f.cleaned_data.get("DELETE")]
        if self.forms and not any(f.cleaned_data.get("role") == Membership.Role.OWNER for f in kept):
            raise ValidationError("A team keeps at least one owner: make someone else an owner first.")


class TeamMembershipInline(admin.TabularInline):
    """The team's members. Changing a role or deleting a row goes through accounts.teams (audited, the
    removed member's keys revoked): TeamAdmin.save_formset."""

    model = Membership
    formset = MembershipFormSet
    extra = 0
    fields = ["user", "role", "created_at"]
    readonly_fields = ["user", "created_at"]
    verbose_name_plural = "members (deleting one removes them and revokes the API keys they created)"

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # people join through invitations


class InvitationInline(admin.TabularInline):
    model = Invitation
    extra = 0
    fields = ["email", "role", "status_now", "invited_by", "created_at", "sent_at", "expires_at", "accepted_by"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # owners and admins invite from the team's page or the API

    @admin.display(description="Status")
    def status_now(self, invitation: Invitation) -> str:
        return invitation.status_at(timezone.now())


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = EmailUserChangeForm
    add_form = EmailUserCreationForm
    ordering = ["email"]
    list_display = ["email", "first_name", "last_name", "is_staff", "is_active", "date_joined"]
    list_filter = ["is_staff", "is_superuser", "is_active"]
    search_fields = ["email", "first_name", "last_name"]
    inlines = [UserMembershipInline]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)

    def get_inline_instances(self, request, obj=None):
        return super().get_inline_instances(request, obj) if obj is not None else []  # no teams before saving

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        if not change:  # every user has a personal team, whoever made the account
            services.team_create_personal(user=obj, set_up=True)


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "is_personal", "current_tier", "created_at"]
    list_filter = ["is_personal"]
    search_fields = ["name", "slug", "memberships__user__email"]
    inlines = [TeamMembershipInline, InvitationInline]
    readonly_fields = ["slug", "customer_records"]

    def save_formset(self, request, form, formset, change) -> None:
        if formset.model is not Membership:
            return super().save_formset(request, form, formset, change)
        # Through the services, so each change is audited (actor: the operator) and a removal revokes
        # the member's keys. New owners first, removals last: the team never has no owner in between.
        changed = [
            f for f in formset.forms if f.instance.pk and "role" in f.changed_data and not f.cleaned_data.get("DELETE")
        ]
        changed.sort(key=lambda f: f.cleaned_data["role"] != Membership.Role.OWNER)
        removed = [f for f in formset.forms if f.instance.pk and f.cleaned_data.get("DELETE")]
        try:
            for f in changed:
                teams.membership_role_set(
                    membership=f.instance, role=f.cleaned_data["role"], actor=request.user, by_operator=True
                )
            for f in removed:
                gone = teams.membership_remove(membership=f.instance, actor=request.user, by_operator=True)
                self.message_user(
                    request,
                    f"Removed {gone.membership.user.email}; {gone.keys_revoked} API key(s) they created revoked.",
                )
        except ApplicationError as exc:
            self.message_user(request, exc.message, level=messages.ERROR)
        # What the admin's history entry lists (formset.save() would have set these).
        formset.new_objects = []
        formset.changed_objects = [(f.instance, ["role"]) for f in changed]
        formset.deleted_objects = [f.instance for f in removed]
        return None

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
