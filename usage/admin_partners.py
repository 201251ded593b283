"""Admin for partners (imported by usage/admin.py): partners with their share rates and keys,
statements (read-only, CSV, email again) and the usage events partners reported (read-only)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from config.admin_base import ReadOnlyAdmin, ReadOnlyInline
from usage import partner_statements, partners
from usage.models import (
    Partner,
    PartnerKey,
    PartnerShareRate,
    PartnerStatement,
    PartnerStatementLine,
    PartnerUsageEvent,
)


class ShareRateFormSet(forms.BaseInlineFormSet):
    """Refuses adding, changing or deleting a rate dated inside a month an issued statement covers
    (partners.share_rates_locked_before): closed statements are never rewritten."""

    def clean(self) -> None:
        super().clean()
        if self.instance.pk is None:
            return
        locked_before = partners.share_rates_locked_before(partner_id=self.instance.pk)
        if locked_before is None:
            return
        for form in self.forms:
            if not hasattr(form, "cleaned_data") or not (form.has_changed() or form in self.deleted_forms):
                continue
            dates = [form.cleaned_data.get("effective_from"), form.initial.get("effective_from")]
            if any(day is not None and day < locked_before for day in dates):
                raise ValidationError(
                    f"Rates dated before {locked_before:%Y-%m-%d} are on issued statements and cannot change; "
                    f"add a rate from {locked_before:%Y-%m-%d} or later."
                )


class PartnerShareRateInline(admin.TabularInline):
    model = PartnerShareRate
    formset = ShareRateFormSet
    fields = ["effective_from", "share_bps", "created_at"]
    readonly_fields = ["created_at"]
    extra = 1


class PartnerKeyInline(admin.TabularInline):
    """Keys are issued with the "Issue a key" action (the secret is shown once); here they are listed
    and can be revoked by setting revoked_at."""

    model = PartnerKey
    fields = ["name", "prefix", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["name", "prefix", "created_at", "last_used_at"]
    extra = 0

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Partner)
class PartnerAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "current_share", "contact_email", "is_active", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "slug", "contact_email"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [PartnerShareRateInline, PartnerKeyInline]
    actions = ["issue_key"]

    @admin.display(description="Share today")
    def current_share(self, obj: Partner) -> str:
        bps = partners.share_bps_on(rates=partners.share_rates_for(partner_id=obj.pk), day=timezone.now().date())
        return f"{bps / 100:g}%"

    @admin.action(description="Issue a key (the secret is shown once)")
    def issue_key(self, request, queryset) -> None:
        for partner in queryset:
            key, secret = partners.partner_key_create(partner=partner, name=f"admin {request.user}")
            messages.warning(
                request,
                f"Key for {partner} ({key.prefix}…), shown once, copy it now: {secret}",
            )


class PartnerStatementLineInline(ReadOnlyInline):
    model = PartnerStatementLine
    fields = readonly_fields = partner_statements.LINE_FIELDS


@admin.register(PartnerStatement)
class PartnerStatementAdmin(ReadOnlyAdmin):
    """Read-only: statements are issued by the beat task and never changed."""

    list_display = ["partner", "month", "issued_at", "emailed_at", "csv_link"]
    list_filter = ["partner", "month"]
    readonly_fields = ["partner", "month", "issued_at", "emailed_at", "totals", "csv_link"]
    inlines = [PartnerStatementLineInline]
    actions = ["email_again"]
    date_hierarchy = "month"

    def get_urls(self):
        csv_view = self.admin_site.admin_view(self.csv_view)
        return [path("<int:statement_id>/csv/", csv_view, name="usage_partnerstatement_csv"), *super().get_urls()]

    def csv_view(self, request, statement_id: int) -> HttpResponse:
        if not self.has_view_permission(request):
            return HttpResponse(status=403)
        statement = get_object_or_404(PartnerStatement.objects.select_related("partner"), pk=statement_id)
        response = HttpResponse(partner_statements.partner_statement_csv(statement=statement), content_type="text/csv")
        filename = partner_statements.partner_statement_filename(statement=statement)
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response

    @admin.display(description="CSV")
    def csv_link(self, obj: PartnerStatement) -> str:
        return format_html('<a href="{}">Download CSV</a>', reverse("admin:usage_partnerstatement_csv", args=[obj.pk]))

    @admin.display(description="Totals")
    def totals(self, obj: PartnerStatement) -> str:
        from tiers.templatetags.tier_format import money

        rows = partner_statements.partner_statement_totals(statement=obj)
        return (
            "; ".join(
                f"{money(row['share_cents'], row['currency'])} owed of {money(row['revenue_cents'], row['currency'])}"
                for row in rows
            )
            or "nothing owed"
        )

    @admin.action(description="Email the statement to the partner again")
    def email_again(self, request, queryset) -> None:
        sent = sum(
            partner_statements.partner_statement_email_send(statement_id=statement.pk, force=True)
            for statement in queryset
        )
        messages.info(request, f"{sent} statement(s) emailed.")


@admin.register(PartnerUsageEvent)
class PartnerUsageEventAdmin(ReadOnlyAdmin):
    """Read-only: events are written by the partner usage API, exactly once per (partner, event id)."""

    list_display = ["occurred_at", "partner", "event_id", "customer", "model", "amount_cents", "currency", "statement"]
    list_filter = ["partner", "model"]
    search_fields = ["event_id", "customer"]
    list_select_related = ["partner", "statement"]
    date_hierarchy = "occurred_at"
    show_full_result_count = False
