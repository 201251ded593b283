"""Partners and licences in the admin."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from core.admin_base import ReadOnlyAdmin, ReadOnlyInline, admin_action_with_form
from core.errors import ApplicationError
from core.money import MinorUnitsField
from core.periods import month_first
from core.templatetags.tier_format import money
from partners import licensing
from partners import services as partners
from partners import statements as partner_statements
from partners.models import (
    LicenseAgreement,
    LicenseCheckRun,
    MonthlyActiveUsers,
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
        return [path("<int:statement_id>/csv/", csv_view, name="partners_partnerstatement_csv"), *super().get_urls()]

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
        return format_html(
            '<a href="{}">Download CSV</a>', reverse("admin:partners_partnerstatement_csv", args=[obj.pk])
        )

    @admin.display(description="Totals")
    def totals(self, obj: PartnerStatement) -> str:
        from core.templatetags.tier_format import money

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

    list_display = ["occurred_at", "partner", "event_id", "customer", "model", "amount", "statement"]
    list_filter = ["partner", "model"]
    search_fields = ["event_id", "customer"]
    list_select_related = ["partner", "statement"]
    date_hierarchy = "occurred_at"
    show_full_result_count = False

    @admin.display(description="Amount", ordering="amount_cents")
    def amount(self, event: PartnerUsageEvent) -> str:
        return money(event.amount_cents, event.currency)


# Actions an operator runs without selecting rows (Django requires a selection otherwise).
NO_SELECTION_ACTIONS = {"run_license_checks"}


class LicenseGrantForm(forms.Form):
    # Typed in the currency's major unit (dollars), stored in cents (core.money).
    monthly_fee_cents = MinorUnitsField(
        label="Monthly fee", min_cents=0, help_text="In the currency below, e.g. 25000.00 for $25,000.00 a month."
    )
    currency = forms.RegexField(
        regex=r"^[a-z]{3}$", initial="usd", max_length=3, help_text="ISO 4217 code in lower case, e.g. usd."
    )
    terms = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False, help_text="Sent to the licensee.")


class LicenseRefuseForm(forms.Form):
    reason = forms.CharField(max_length=500, help_text="Sent to the licensee and kept on the agreement.")


def _decision_action(modeladmin, request, queryset, *, action, title, intro, submit_label, form_class, initial, decide):
    """An action with an intermediate page (core.admin_base.admin_action_with_form): ``decide(agreement,
    cleaned_data)`` calls the service for each selected agreement; each outcome is reported."""

    def perform(cleaned_data: dict) -> None:
        done, failed = [], []
        for agreement in queryset.select_related("team"):
            try:
                decide(agreement, cleaned_data)
            except (ApplicationError, ValidationError) as exc:
                failed.append(f"{agreement}: {getattr(exc, 'message', None) or '; '.join(exc.messages)}")
            else:
                done.append(str(agreement.team))
                details = ", ".join(f"{name}={value!r}" for name, value in cleaned_data.items())
                modeladmin.log_change(request, agreement, f"{title}: {details}")
        if done:
            modeladmin.message_user(request, f"{submit_label} for {', '.join(done)}.", messages.SUCCESS)
        for failure in failed:
            modeladmin.message_user(request, failure, messages.ERROR)

    return admin_action_with_form(
        modeladmin, request, queryset, action=action, title=title, intro=intro, submit_label=submit_label,
        form_class=form_class, initial=initial, perform=perform,
    )  # fmt: skip


class RunChecksMixin:
    """The "run licence checks now" action, which needs no selected rows."""

    def changelist_view(self, request: HttpRequest, extra_context=None):
        if (
            request.method == "POST"
            and request.POST.get("action") in NO_SELECTION_ACTIONS
            and not request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
        ):
            # Django's changelist refuses an action without a selection; this one ignores the
            # queryset, so a placeholder selection lets it through.
            post = request.POST.copy()
            post.setlist(helpers.ACTION_CHECKBOX_NAME, ["0"])
            request.POST = post
        return super().changelist_view(request, extra_context)

    @admin.action(description="Run licence checks now (every release date not checked yet)")
    def run_license_checks(self, request: HttpRequest, queryset) -> None:
        count = licensing.license_checks_run(now=timezone.now())
        if count:
            self.message_user(request, f"Ran {count} licence check(s).", messages.SUCCESS)
        else:
            self.message_user(request, "Every model release date has been checked already.", messages.INFO)


@admin.register(LicenseAgreement)
class LicenseAgreementAdmin(RunChecksMixin, admin.ModelAdmin):
    list_display = ["team", "status", "required_from", "reported", "fee", "decided_at", "decided_by"]
    list_filter = ["status", "required_from"]
    search_fields = ["team__name", "team__memberships__user__email"]
    list_select_related = ["team", "decided_by"]
    actions = ["grant_licenses", "refuse_licenses", "run_license_checks"]
    readonly_fields = ["team", *licensing.AGREEMENT_FIELDS, "decided_by", "created_at", "updated_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # agreements come from the checks

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # the record of a decision stays; the model PROTECTs the team for the same reason

    @admin.display(description="MAU reported")
    def reported(self, agreement: LicenseAgreement) -> str:
        return f"{agreement.reported_mau:,} ({agreement.mau_month:%Y-%m})"

    @admin.display(description="Monthly fee")
    def fee(self, agreement: LicenseAgreement) -> str:
        return (
            money(agreement.monthly_fee_cents, agreement.currency)
            if agreement.status == LicenseAgreement.Status.GRANTED
            else "—"
        )

    @admin.action(description="Grant selected licences…", permissions=["change"])
    def grant_licenses(self, request: HttpRequest, queryset):
        return _decision_action(
            self,
            request,
            queryset,
            action="grant_licenses",
            title="Grant licences",
            intro="Each selected team may use every model its tier includes again, on these fee terms. "
            "The team's owners are emailed.",
            submit_label="Granted",
            form_class=LicenseGrantForm,
            initial={"currency": "usd"},
            decide=lambda agreement, data: licensing.license_grant(
                agreement=agreement,
                actor=request.user,
                monthly_fee_cents=data["monthly_fee_cents"],
                currency=data["currency"],
                terms=data["terms"],
                now=timezone.now(),
            ),
        )

    @admin.action(description="Refuse selected licences…", permissions=["change"])
    def refuse_licenses(self, request: HttpRequest, queryset):
        return _decision_action(
            self,
            request,
            queryset,
            action="refuse_licenses",
            title="Refuse licences",
            intro="Each selected team stays refused the models released on or after its date. The "
            "team's owners are emailed the reason.",
            submit_label="Refused",
            form_class=LicenseRefuseForm,
            initial={},
            decide=lambda agreement, data: licensing.license_refuse(
                agreement=agreement, actor=request.user, reason=data["reason"], now=timezone.now()
            ),
        )


class MonthlyActiveUsersForm(forms.ModelForm):
    class Meta:
        model = MonthlyActiveUsers
        fields = ["team", "month", "active_users"]
        help_texts = {"month": "Any day of the month: it is stored as the month's first day."}

    def clean_month(self):
        month = month_first(self.cleaned_data["month"])
        if month > month_first(timezone.now().date()):
            raise ValidationError("That month has not started yet.")
        return month


@admin.register(MonthlyActiveUsers)
class MonthlyActiveUsersAdmin(admin.ModelAdmin):
    form = MonthlyActiveUsersForm
    list_display = ["team", "month", "active_users_display", "reported_at"]
    list_filter = ["month"]
    search_fields = ["team__name", "team__memberships__user__email"]
    list_select_related = ["team"]
    date_hierarchy = "month"

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        # A report is one (team, month): correcting it changes the figure, not which month it is.
        return ["team", "month", "reported_at"] if obj else ["reported_at"]

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # a report may have triggered an agreement: correct it instead

    @admin.display(description="Active users", ordering="active_users")
    def active_users_display(self, report: MonthlyActiveUsers) -> str:
        return f"{report.active_users:,}"

    def save_model(self, request: HttpRequest, obj: MonthlyActiveUsers, form, change: bool) -> None:
        # Through the service, like the API: a correction after the month's check is held to it.
        saved = licensing.mau_report_record(
            team=obj.team, month=obj.month, active_users=obj.active_users, now=timezone.now()
        )
        obj.pk, obj.reported_at = saved.pk, saved.reported_at


@admin.register(LicenseCheckRun)
class LicenseCheckRunAdmin(RunChecksMixin, ReadOnlyAdmin):
    list_display = ["release_date", "mau_month", "threshold_display", "flagged", "run_at"]
    readonly_fields = ["release_date", "mau_month", "threshold", "flagged", "run_at"]
    actions = ["run_license_checks"]

    @admin.display(description="Threshold (MAU)", ordering="threshold")
    def threshold_display(self, run: LicenseCheckRun) -> str:
        return f"{run.threshold:,}"
