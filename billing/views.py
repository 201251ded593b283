"""The billing pages: the subscription and card, checkout, cancel/resume, invoices; and Stripe's webhook."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import date as date_filter
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from accounts.decorators import team_page
from accounts.roles import TeamAction
from billing import checkout, checkout_payment, customers, selectors, webhooks
from billing.forms import DECLINED_MESSAGE, CardChangeForm, CheckoutForm
from billing.models import BillingCustomer, Invoice
from billing.services import CheckoutResult, PaymentMethodRequired
from billing.stripe_gateway import (
    PaymentDeclined,
    PaymentInvalidRequest,
    PaymentProviderUnavailable,
    PaymentRequiresAction,
    SetupIntentInvalid,
    WebhookSignatureInvalid,
    stripe_js,
)
from core.errors import ApplicationError
from core.templatetags.tier_format import money
from tiers.models import Subscription
from tiers.selectors import subscription_current, tier_list_public

if TYPE_CHECKING:
    from accounts.models import Team


# Thin: each POST calls one billing service and reports what it did; errors of the domain come back
# as form errors (checkout, card) or messages (cancel, undo). Nothing here decides a billing rule.
# Every page acts on the current team (accounts.decorators.team_page): owners, admins and billing
# members see it; the services check the same roles again for every change.


def _team(request: HttpRequest) -> Team:
    return request.team


def _day(value: datetime | None) -> str:
    return date_filter(value, "M j, Y") if value else ""


def _payment_error_message(exc: ApplicationError) -> str:
    if isinstance(exc, PaymentDeclined) and exc.code == "authentication_failed":
        return exc.message
    if isinstance(exc, PaymentDeclined):
        return DECLINED_MESSAGE
    if isinstance(exc, SetupIntentInvalid):
        return exc.message
    if isinstance(exc, PaymentRequiresAction):
        return (
            "This card needs the cardholder to authenticate (3-D Secure), which cannot happen here: try another card."
        )
    if isinstance(exc, PaymentInvalidRequest):
        return f"The payment provider refused this card ({exc.message}). Nothing was charged or changed: try another."
    if isinstance(exc, PaymentProviderUnavailable):
        # Its answer may have been lost on the way, so "nothing was charged" is not known: the engine
        # settles the attempt within minutes (billing.payments) and never charges it twice.
        return (
            "We could not reach the payment provider, or it did not answer in time. Your tier changes only"
            " once a payment is confirmed, and you are never charged twice: look at this page again in a few"
            " minutes."
        )
    return exc.message


def _result_message(result: CheckoutResult) -> str:
    """What a subscribe/change/cancel/resume did, in one sentence for the billing page."""
    subscription = result.subscription
    tier = subscription.tier
    charged = ""
    if result.invoice is not None and result.invoice.status == Invoice.Status.PAID:
        amount = result.payment.amount_cents if result.payment is not None else result.invoice.total_cents
        charged = f" We charged {money(amount, result.invoice.currency)} — invoice {result.invoice.number}."
    elif result.invoice is not None:
        charged = (
            f" Invoice {result.invoice.number} for {money(result.invoice.total_cents, result.invoice.currency)}"
            f" is {result.invoice.get_status_display().lower()}."
        )
    period_end = _day(subscription.current_period_end)
    if result.change == "subscribed":
        return f"You're on {tier.name}.{charged}"
    if result.change == "trial_started":
        return (
            f"Your {tier.name} trial has started. Nothing is charged until {_day(subscription.trial_end)}, "
            f"then {money(tier.price_cents, tier.currency)} per {tier.billing_interval}."
        )
    if result.change == "upgraded" and subscription.status == Subscription.Status.TRIALING:
        # A switch during the trial charges nothing (billing.checkout._trial_tier_switch): say so, as the
        # checkout page did, rather than speak of a proration that did not happen.
        return (
            f"You're on {tier.name} now, still in your free trial. Nothing is charged until "
            f"{_day(subscription.trial_end)}, then {money(tier.price_cents, tier.currency)} per "
            f"{tier.billing_interval}."
        )
    if result.change == "upgraded":
        return f"You're on {tier.name} now; the rest of this period is prorated.{charged}"
    if result.change == "downgrade_scheduled":
        target = subscription.pending_tier.name if subscription.pending_tier else "the new tier"
        return f"You'll move to {target} on {period_end}. Until then you keep {tier.name}."
    if result.change == "cancel_scheduled":
        return f"Your {tier.name} subscription ends on {period_end}; then your team moves to the free tier."
    if result.change == "resumed":
        return f"Done: you stay on {tier.name}."
    return f"Your subscription is on {tier.name}.{charged}"


def _card_page(request: HttpRequest, template: str, context: dict, *, status: int = 200) -> HttpResponse:
    """A page with Stripe.js card entry: the script it loads, and a CSP that allows exactly its origins
    (stripe_gateway.stripe_js: localstripe's, or Stripe's own) on this page only."""
    js = stripe_js()
    response = render(request, template, {**context, "stripe_js": js}, status=status)
    response._csp_update = {  # django-csp: added to the policy of this response
        "script-src": list(js.script_origins),
        "connect-src": list(js.connect_origins),
        **({"frame-src": list(js.frame_origins)} if js.frame_origins else {}),
    }
    return response


def _billing_page(request: HttpRequest, team: Team, card_form: CardChangeForm, *, status: int = 200) -> HttpResponse:
    overview = selectors.billing_overview(team=team)
    return _card_page(
        request,
        "billing/billing.html",
        {"team": team, "overview": overview, "subscription": overview.subscription, "card_form": card_form},
        status=status,
    )


@team_page(TeamAction.BILLING_VIEW)
def billing_page(request: HttpRequest) -> HttpResponse:
    return _billing_page(request, _team(request), CardChangeForm())


@team_page(TeamAction.BILLING_MANAGE)
@require_POST
def billing_payment_method(request: HttpRequest) -> HttpResponse:
    team = _team(request)
    form = CardChangeForm(request.POST)
    if form.is_valid():
        try:
            customer = customers.payment_method_update(
                team=team,
                payment_method=form.selected_payment_method,
                setup_intent=form.selected_setup_intent,
                actor=request.user,
            )
        except ApplicationError as exc:
            form.add_error("payment_method", _payment_error_message(exc))
        else:
            messages.success(
                request, f"Your card on file is now {customer.card_brand.title()} •••• {customer.card_last4}."
            )
            return redirect("billing")
    return _billing_page(request, team, form, status=400)


def _subscription_action(request: HttpRequest, service: Callable[..., CheckoutResult]) -> HttpResponse:
    """Cancel or undo: call ``service`` for the team, report what it did (or its refusal) on the page."""
    try:
        result = service(team=_team(request), actor=request.user)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, _result_message(result))
    return redirect("billing")


@team_page(TeamAction.BILLING_MANAGE)
@require_POST
def billing_cancel(request: HttpRequest) -> HttpResponse:
    return _subscription_action(request, checkout.subscription_cancel)


@team_page(TeamAction.BILLING_MANAGE)
@require_POST
def billing_resume(request: HttpRequest) -> HttpResponse:
    return _subscription_action(request, checkout.subscription_resume)


@team_page(TeamAction.BILLING_MANAGE)
@require_POST
def billing_setup_intent(request: HttpRequest) -> JsonResponse:
    """POST /billing/setup-intent/: a SetupIntent's client secret for the page's Stripe.js (JSON)."""
    try:
        intent = customers.setup_intent_start(team=_team(request), actor=request.user)
    except ApplicationError as exc:
        return JsonResponse(exc.body(), status=exc.status)  # the project's one JSON error shape
    return JsonResponse({"client_secret": intent.client_secret})


@team_page(TeamAction.BILLING_MANAGE)
def billing_checkout(request: HttpRequest, tier_slug: str) -> HttpResponse:
    team = _team(request)
    # Archived and non-public tiers cannot be chosen: they are not found here.
    tier = get_object_or_404(tier_list_public(), slug=tier_slug)
    subscription = subscription_current(team=team)
    plan = checkout.subscription_change_preview(team=team, tier=tier)
    customer = BillingCustomer.objects.filter(team=team).first()
    data = request.POST if request.method == "POST" else None  # a POST without a card is empty, yet bound
    form = CheckoutForm(data, customer=customer, card_needed=plan.card_needed)
    authentication: dict | None = None  # the charge's 3-D Secure, for the page's Stripe.js
    if request.method == "POST" and form.is_valid():
        try:
            if form.cleaned_data.get("payment_intent"):
                result = checkout_payment.checkout_payment_confirm(
                    team=team, payment_intent_id=form.cleaned_data["payment_intent"], actor=request.user
                )
            else:
                result = checkout.subscription_change(
                    team=team,
                    tier=tier,
                    payment_method=form.selected_payment_method,
                    setup_intent=form.selected_setup_intent,
                    in_browser=True,
                    actor=request.user,
                )
        except PaymentRequiresAction as exc:
            if not exc.extra.get("client_secret"):
                form.add_error(_card_field(form), _payment_error_message(exc))
            else:
                authentication = {"client_secret": exc.extra["client_secret"], "message": exc.message}
        except ApplicationError as exc:
            is_card_error = isinstance(exc, (PaymentDeclined, PaymentInvalidRequest, PaymentMethodRequired))
            form.add_error(_card_field(form) if is_card_error else None, _payment_error_message(exc))
        else:
            messages.success(request, _result_message(result))
            return redirect("billing")
    context = {
        "team": team,
        "tier": tier,
        "subscription": subscription,
        "plan": plan,
        "form": form,
        "customer": customer,
        "authentication": authentication,
    }
    return _card_page(request, "billing/checkout.html", context, status=400 if form.errors else 200)


def _card_field(form: CheckoutForm) -> str | None:
    """Where a card's error shows: on the card entry when the form asks for a card."""
    return "payment_method" if form.card_needed else None


@team_page(TeamAction.BILLING_VIEW)
def billing_invoice(request: HttpRequest, number: str) -> HttpResponse:
    team = _team(request)
    invoice = get_object_or_404(selectors.invoice_list_for_team(team=team).select_related("team"), number=number)
    lines = list(invoice.lines.select_related("tier"))
    payments = list(invoice.payments.prefetch_related("refunds").order_by("attempt"))
    return render(
        request, "billing/invoice.html", {"team": team, "invoice": invoice, "lines": lines, "payments": payments}
    )


# --- Stripe's webhook ----------------------------------------------------------------------------------
# POST /stripe/webhook/: Stripe's (or localstripe's) event deliveries. Thin: verify + store, 200.


@csrf_exempt  # Stripe cannot send a CSRF token; the signature is the authentication
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    try:
        event = webhooks.stripe_event_receive(
            payload=request.body, signature_header=request.headers.get("Stripe-Signature", "")
        )
    except WebhookSignatureInvalid as exc:
        error = {"message": exc.message, "type": exc.type, "code": exc.code, "param": None}
        return JsonResponse({"error": error}, status=400)
    return JsonResponse({"received": True, "id": event.event_id})
