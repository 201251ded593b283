"""Billing in the admin: invoices, payments, refunds, the webhook inbox, the audit log, customers and
subscriptions (with the operators' actions on them)."""

from __future__ import annotations

import json
from collections.abc import Callable

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from accounts.models import AuditEntry
from billing import checkout, refunds
from billing.forms import OperatorReasonForm, OperatorTierMoveForm
from billing.models import BillingCustomer, ExtraCharge, Invoice, InvoiceLine, Payment, Refund, StripeEvent
from core.admin_base import ReadOnlyInline, admin_action_with_form
from core.errors import ApplicationError
from core.templatetags.tier_format import money
from tiers import services as tier_services
from tiers.models import Subscription

# Money moves only through the billing services (billing/checkout.py, refunds.py...), which write the
# audit log. Here every billing row is read-only (no add, no edit, no delete): the change pages are
# view-only, and the actions below (comp, refund, move tier, cancel now, suspend) are the only way an
# operator changes billing state.


def _audit_url(team_id: int | None) -> str:
    return f"{reverse('admin:accounts_auditentry_changelist')}?team__id__exact={team_id}"


def _pretty_json(value) -> str:
    return format_html(
        '<pre style="white-space: pre-wrap; margin: 0">{}</pre>', json.dumps(value, indent=2, sort_keys=True)
    )


def _report(modeladmin: admin.ModelAdmin, request: HttpRequest, done: list[str], failed: list[str], verb: str) -> None:
    if done:
        modeladmin.message_user(request, f"{verb} {len(done)}: {', '.join(done)}.", messages.SUCCESS)
    for failure in failed:
        modeladmin.message_user(request, failure, messages.ERROR)


def _each_subscription(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset, verb: str, call: Callable[[Subscription], object]
) -> None:
    """``call`` (one service) for each selected subscription; what it refused is reported, not raised."""
    done, failed = [], []
    for subscription in queryset.select_related("team", "tier"):
        try:
            call(subscription)
        except ApplicationError as exc:
            failed.append(f"{subscription.team}: {exc.message}")
        else:
            done.append(str(subscription.team))
    _report(modeladmin, request, done, failed, verb)


class ReadOnlyBillingAdmin(admin.ModelAdmin):
    """No add, no delete; the change page is view-only. List-level change permission stays, so the
    actions (which require it) remain available to operators who hold it."""

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        if obj is not None:
            return False
        return super().has_change_permission(request, obj)


class InvoiceLineInline(ReadOnlyInline):
    model = InvoiceLine
    fields = ["kind", "description", "tier", "quantity", "unit_amount", "amount", "period_start", "period_end"]
    readonly_fields = fields

    @admin.display(description="Unit price")
    def unit_amount(self, line: InvoiceLine) -> str:
        return money(line.unit_amount_cents, line.invoice.currency)

    @admin.display(description="Amount")
    def amount(self, line: InvoiceLine) -> str:
        return money(line.amount_cents, line.invoice.currency)


class PaymentInline(ReadOnlyInline):
    model = Payment
    fields = ["attempt", "status", "amount", "refunded", "stripe_payment_intent_id", "failure_code", "created_at"]
    readonly_fields = fields
    show_change_link = True

    @admin.display(description="Amount")
    def amount(self, payment: Payment) -> str:
        return money(payment.amount_cents, payment.currency)

    @admin.display(description="Refunded")
    def refunded(self, payment: Payment) -> str:
        return money(payment.amount_refunded_cents, payment.currency)


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyBillingAdmin):
    list_display = ["number", "team", "kind", "status", "total", "period", "issued_at", "paid_at"]
    list_filter = ["status", "kind", "currency", "issued_at"]
    search_fields = ["number", "team__name", "team__memberships__user__email"]
    list_select_related = ["team"]
    date_hierarchy = "issued_at"
    inlines = [InvoiceLineInline, PaymentInline]
    actions = ["comp_invoices"]
    fieldsets = (
        (None, {"fields": ("number", "team", "subscription", "kind", "status", "memo")}),
        ("Amount", {"fields": ("total", "currency", "period_start", "period_end")}),
        ("Dates", {"fields": ("issued_at", "paid_at", "voided_at")}),
        ("Collection", {"fields": ("attempt_count", "next_attempt_at", "billing_key", "audit_trail")}),
    )
    readonly_fields = ["total", "audit_trail"]

    @admin.display(description="Total", ordering="total_cents")
    def total(self, invoice: Invoice) -> str:
        return money(invoice.total_cents, invoice.currency)

    @admin.display(description="Period", ordering="period_start")
    def period(self, invoice: Invoice) -> str:
        return f"{invoice.period_start:%Y-%m-%d} to {invoice.period_end:%Y-%m-%d}"

    @admin.display(description="Audit trail")
    def audit_trail(self, invoice: Invoice) -> str:
        return format_html('<a href="{}">Billing audit entries of {}</a>', _audit_url(invoice.team_id), invoice.team)

    @admin.action(description="Comp (waive) selected open invoices", permissions=["change"])
    def comp_invoices(self, request: HttpRequest, queryset):
        def perform(data: dict) -> None:
            done, failed = [], []
            for invoice in queryset:
                if invoice.status != Invoice.Status.OPEN:
                    failed.append(f"{invoice} is {invoice.get_status_display().lower()}, not open: not comped.")
                    continue
                try:
                    refunds.invoice_comp(invoice=invoice, actor=request.user, reason=data["reason"])
                except ApplicationError as exc:
                    failed.append(f"{invoice}: {exc.message}")
                else:
                    done.append(str(invoice))
            _report(self, request, done, failed, "Comped")

        return admin_action_with_form(
            self,
            request,
            queryset,
            action="comp_invoices",
            title="Comp (waive) invoices",
            intro="Each open invoice is voided: dunning stops, and a subscription past due because of it is "
            "restored. Nothing is refunded. Each comp is written to the customer's billing audit log.",
            submit_label="Comp these invoices",
            form_class=OperatorReasonForm,
            initial={"reason": f"Comped by operator {request.user.email}"},
            perform=perform,
        )


class RefundInline(ReadOnlyInline):
    model = Refund
    fields = ["amount", "status", "reason", "created_by", "created_at", "stripe_refund_id"]
    readonly_fields = fields

    @admin.display(description="Amount")
    def amount(self, refund: Refund) -> str:
        return money(refund.amount_cents, refund.payment.currency)


class ExtraChargeInline(ReadOnlyInline):
    """Second charges of this attempt (or charges of its closed invoice), refunded automatically."""

    model = ExtraCharge
    fields = ["stripe_payment_intent_id", "reason", "amount", "status", "stripe_refund_id", "created_at"]
    readonly_fields = fields

    @admin.display(description="Amount")
    def amount(self, extra: ExtraCharge) -> str:
        return money(extra.amount_cents, extra.currency)


@admin.register(Payment)
class PaymentAdmin(ReadOnlyBillingAdmin):
    list_display = ["__str__", "team", "amount", "refunded", "status", "failure_code", "created_at"]
    list_filter = ["status", "currency", "created_at"]
    search_fields = [
        "invoice__number",
        "stripe_payment_intent_id",
        "invoice__team__name",
        "invoice__team__memberships__user__email",
    ]
    list_select_related = ["invoice__team"]
    inlines = [RefundInline, ExtraChargeInline]
    actions = ["refund_payments"]
    fields = [
        "invoice",
        "attempt",
        "status",
        "amount",
        "refunded",
        "currency",
        "stripe_payment_intent_id",
        "idempotency_key",
        "failure_code",
        "failure_message",
        "quiet_until",
        "created_at",
        "updated_at",
    ]
    readonly_fields = ["amount", "refunded"]

    @admin.display(description="Team", ordering="invoice__team__name")
    def team(self, payment: Payment) -> str:
        return str(payment.invoice.team)

    @admin.display(description="Amount", ordering="amount_cents")
    def amount(self, payment: Payment) -> str:
        return money(payment.amount_cents, payment.currency)

    @admin.display(description="Refunded", ordering="amount_refunded_cents")
    def refunded(self, payment: Payment) -> str:
        return money(payment.amount_refunded_cents, payment.currency)

    @admin.action(description="Refund selected payments (full amount)", permissions=["change"])
    def refund_payments(self, request: HttpRequest, queryset):
        def perform(data: dict) -> None:
            done, failed = [], []
            for payment in queryset.select_related("invoice"):
                if payment.status != Payment.Status.SUCCEEDED or payment.amount_refunded_cents >= payment.amount_cents:
                    failed.append(f"{payment}: only a succeeded, not fully refunded payment can be refunded.")
                    continue
                try:
                    # The refund's own amount: ``payment`` is refreshed by the service, so what is "left"
                    # of it afterwards is 0 and would report "$0.00".
                    refund = refunds.payment_refund(payment=payment, actor=request.user, reason=data["reason"])
                except ApplicationError as exc:
                    failed.append(f"{payment}: {exc.message}")
                else:
                    done.append(f"{payment.invoice} ({money(refund.amount_cents, payment.currency)})")
            _report(self, request, done, failed, "Refunded")

        return admin_action_with_form(
            self,
            request,
            queryset,
            action="refund_payments",
            title="Refund payments",
            intro="Each succeeded payment is refunded in full (what is left of it) through Stripe. The invoice "
            "stays paid. Each refund is written to the customer's billing audit log.",
            submit_label="Refund these payments",
            form_class=OperatorReasonForm,
            initial={"reason": f"Refunded by operator {request.user.email}"},
            perform=perform,
        )


@admin.register(Refund)
class RefundAdmin(ReadOnlyBillingAdmin):
    list_display = ["__str__", "amount", "status", "reason", "created_by", "created_at"]
    list_filter = ["status", "created_at"]
    search_fields = ["stripe_refund_id", "payment__invoice__number", "payment__invoice__team__name"]
    list_select_related = ["payment__invoice", "created_by"]
    readonly_fields = ["amount"]

    @admin.display(description="Amount", ordering="amount_cents")
    def amount(self, refund: Refund) -> str:
        return money(refund.amount_cents, refund.payment.currency)


@admin.register(ExtraCharge)
class ExtraChargeAdmin(ReadOnlyBillingAdmin):
    """Money TierLab did not ask for (billing/extra_charges.py): refunded automatically; a ``failed``
    one (Stripe refused the refund) is for an operator to settle in Stripe's dashboard."""

    list_display = ["stripe_payment_intent_id", "payment", "reason", "amount", "status", "created_at"]
    list_filter = ["status", "reason", "created_at"]
    search_fields = ["stripe_payment_intent_id", "stripe_refund_id", "payment__invoice__number"]
    list_select_related = ["payment__invoice"]
    readonly_fields = ["amount"]

    @admin.display(description="Amount", ordering="amount_cents")
    def amount(self, extra: ExtraCharge) -> str:
        return money(extra.amount_cents, extra.currency)


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyBillingAdmin):
    list_display = ["event_id", "type", "received_at", "processed_at", "failed"]
    list_filter = ["type", ("processed_at", admin.EmptyFieldListFilter), "received_at"]
    search_fields = ["event_id", "type"]
    fields = ["event_id", "type", "received_at", "processed_at", "processing_error", "payload_pretty"]
    readonly_fields = ["payload_pretty"]

    @admin.display(description="Error", boolean=True)
    def failed(self, event: StripeEvent) -> bool:
        return bool(event.processing_error)

    @admin.display(description="Payload")
    def payload_pretty(self, event: StripeEvent) -> str:
        return _pretty_json(event.payload)


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyBillingAdmin):
    list_display = ["created_at", "team", "actor", "action", "description"]
    list_filter = ["action", "created_at"]
    search_fields = ["team__name", "team__memberships__user__email", "actor__email", "action", "description"]
    list_select_related = ["team", "actor"]
    date_hierarchy = "created_at"
    fields = ["created_at", "team", "actor", "action", "description", "data_pretty"]
    readonly_fields = ["data_pretty"]

    @admin.display(description="Data")
    def data_pretty(self, entry: AuditEntry) -> str:
        return _pretty_json(entry.data)


@admin.register(BillingCustomer)
class BillingCustomerAdmin(ReadOnlyBillingAdmin):
    list_display = ["team", "stripe_customer_id", "card", "created_at"]
    search_fields = ["team__name", "team__memberships__user__email", "stripe_customer_id"]
    list_select_related = ["team"]
    fields = ["team", "stripe_customer_id", "card", "default_payment_method_id", "created_at", "updated_at"]
    readonly_fields = ["card"]

    @admin.display(description="Card on file")
    def card(self, customer: BillingCustomer) -> str:
        return f"{customer.card_brand_name} •••• {customer.card_last4}" if customer.card_last4 else "—"


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ["team", "tier", "status", "current_period_start", "current_period_end", "cancel_at_period_end"]
    list_filter = ["status", "tier", "cancel_at_period_end"]
    search_fields = ["team__name", "team__memberships__user__email"]
    list_select_related = ["team", "tier"]
    autocomplete_fields = ["team"]
    # Tier changes, cancellation and periods move through the billing services (with proration and
    # invoices), never by editing fields here.
    readonly_fields = [
        "team",
        "tier",
        "status",
        "billing_anchor",
        "current_period_start",
        "current_period_end",
        "trial_end",
        "cancel_at_period_end",
        "pending_tier",
        "canceled_at",
        "past_due_since",
        "created_at",
        "updated_at",
        "invoices",
        "audit_trail",
    ]
    actions = ["move_to_tier", "cancel_now", "suspend", "unsuspend"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.display(description="Invoices")
    def invoices(self, subscription: Subscription) -> str:
        url = f"{reverse('admin:billing_invoice_changelist')}?team__id__exact={subscription.team_id}"
        return format_html('<a href="{}">Invoices of {}</a>', url, subscription.team)

    @admin.display(description="Billing audit trail")
    def audit_trail(self, subscription: Subscription) -> str:
        entries = AuditEntry.objects.filter(team_id=subscription.team_id).select_related("actor")[:10]
        rows = format_html_join(
            "",
            "<li>{} · {} · {}{}</li>",
            (
                (
                    # Read by people: "Dec 4, 2026 14:05 UTC" and the action's label, not its code.
                    f"{entry.created_at:%b} {entry.created_at.day}, {entry.created_at:%Y %H:%M} UTC",
                    entry.get_action_display(),
                    entry.description,
                    f" ({entry.actor.email})" if entry.actor else "",
                )
                for entry in entries
            ),
        )
        return format_html(
            '<ul style="margin: 0; padding-left: 1.2em">{}</ul><a href="{}">All audit entries of {}</a>',
            rows or format_html("<li>{}</li>", "None yet."),
            _audit_url(subscription.team_id),
            subscription.team,
        )

    @admin.action(description="Move to tier…", permissions=["change"])
    def move_to_tier(self, request: HttpRequest, queryset):
        def perform(data: dict) -> None:
            _each_subscription(
                self,
                request,
                queryset,
                f"Moved to {data['tier']}",
                lambda subscription: checkout.subscription_tier_set_by_operator(
                    subscription=subscription, tier=data["tier"], actor=request.user, reason=data["reason"]
                ),
            )

        return admin_action_with_form(
            self,
            request,
            queryset,
            action="move_to_tier",
            title="Move subscriptions to another tier",
            intro="The tier changes now, without a proration charge; later renewals bill the new tier's price. "
            "Each move is written to the customer's billing audit log.",
            submit_label="Move these subscriptions",
            form_class=OperatorTierMoveForm,
            initial={"reason": f"Moved by operator {request.user.email}"},
            perform=perform,
        )

    @admin.action(description="Cancel now (no refund)", permissions=["change"])
    def cancel_now(self, request: HttpRequest, queryset):
        def perform(data: dict) -> None:
            _each_subscription(
                self,
                request,
                queryset,
                "Canceled now",
                lambda subscription: checkout.subscription_cancel(
                    team=subscription.team, immediately=True, actor=request.user
                ),
            )

        return admin_action_with_form(
            self,
            request,
            queryset,
            action="cancel_now",
            title="Cancel subscriptions now",
            intro="The paid tier ends now, not at the period end, and nothing is refunded (refund payments "
            "separately if you mean to). Each cancellation is written to the customer's billing audit log.",
            submit_label="Cancel these subscriptions now",
            form_class=forms.Form,
            initial={},
            perform=perform,
        )

    @admin.action(description="Suspend…", permissions=["change"])
    def suspend(self, request: HttpRequest, queryset):
        def perform(data: dict) -> None:
            _each_subscription(
                self,
                request,
                queryset,
                "Suspended",
                lambda subscription: tier_services.subscription_suspend(
                    subscription=subscription, actor=request.user, reason=data["reason"]
                ),
            )

        return admin_action_with_form(
            self,
            request,
            queryset,
            action="suspend",
            title="Suspend subscriptions",
            intro="The model API refuses a suspended team (subscription_inactive), its periods are not billed, and "
            "it cannot change tier until the suspension is lifted. Open invoices stay open. Each suspension is "
            "written to the customer's billing audit log.",
            submit_label="Suspend these subscriptions",
            form_class=OperatorReasonForm,
            initial={"reason": f"Suspended by operator {request.user.email}"},
            perform=perform,
        )

    @admin.action(description="Lift suspension…", permissions=["change"])
    def unsuspend(self, request: HttpRequest, queryset):
        def perform(data: dict) -> None:
            _each_subscription(
                self,
                request,
                queryset,
                "Suspension lifted",
                lambda subscription: tier_services.subscription_unsuspend(
                    subscription=subscription, actor=request.user, reason=data["reason"]
                ),
            )

        return admin_action_with_form(
            self,
            request,
            queryset,
            action="unsuspend",
            title="Lift suspensions",
            intro="Each subscription returns to what it was (past due while a failed renewal is unpaid, trialing "
            "while its trial runs, else active); a period that ended meanwhile is billed by the next billing pass. "
            "Each is written to the customer's billing audit log.",
            submit_label="Lift these suspensions",
            form_class=OperatorReasonForm,
            initial={"reason": f"Suspension lifted by operator {request.user.email}"},
            perform=perform,
        )
