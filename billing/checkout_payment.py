"""A checkout charge's outcome, and 3-D Secure at the checkout page (Stripe.js confirmCardPayment).

When the card of a checkout charge asks for authentication, the customer is still at the page: the
charge (on-session) comes back ``requires_action``, its invoice stays open, the page's Stripe.js runs
the 3-D Secure dialog with the PaymentIntent's client secret, and ``checkout_payment_confirm`` applies
what Stripe then says (the webhook may say it first; billing.payments applies an outcome once).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from billing import stripe_gateway as gateway
from billing.models import Invoice, Payment
from billing.payments import checkout_abandon, payment_outcome_record
from billing.services import CHECKOUT_KINDS, BillingError, CheckoutResult, billing_now, billing_role_check
from tiers.models import Subscription

if TYPE_CHECKING:
    from accounts.models import Team, User


def authentication_request(*, payment: Payment, invoice: Invoice, in_browser: bool, now: datetime) -> None:
    """The charge asks for 3-D Secure: raise PaymentRequiresAction with what the page's Stripe.js needs
    (confirmCardPayment), the invoice left open; without a browser to ask in, void it and raise."""
    secret = ""
    if in_browser:
        try:
            secret = gateway.payment_intent_retrieve(payment_intent_id=payment.stripe_payment_intent_id).client_secret
        except gateway.PaymentError:
            secret = ""  # cannot ask: treated as a decline below
    if not secret:
        checkout_abandon(invoice_id=invoice.pk, now=now)
        return
    raise gateway.PaymentRequiresAction(
        "Your bank asks you to confirm this payment.",
        extra={
            "invoice": invoice.number,
            "payment_intent": payment.stripe_payment_intent_id,
            "client_secret": secret,
        },
    )


def checkout_payment_confirm(
    *, team: Team, payment_intent_id: str, actor: User | None = None, now: datetime | None = None
) -> CheckoutResult:
    """After the checkout page's Stripe.js ran 3-D Secure for a charge (confirmCardPayment): ask Stripe
    for the PaymentIntent's outcome and apply it (the tier changes if it succeeded, once, whoever records
    it first: this call or the webhook). Only a checkout charge of this team is looked at. Raises
    PaymentDeclined when authentication failed (the invoice is voided, nothing changed), BillingError
    for an id that is not this team's checkout charge."""
    now = billing_now(now)
    billing_role_check(team=team, actor=actor)
    payment = (
        Payment.objects.select_related("invoice")
        .filter(stripe_payment_intent_id=payment_intent_id, invoice__team=team, invoice__kind__in=CHECKOUT_KINDS)
        .first()
    )
    if not payment_intent_id or payment is None:
        raise BillingError("This payment is not one of your checkouts; nothing was changed.", code="payment_unknown")
    intent = gateway.payment_intent_retrieve(payment_intent_id=payment_intent_id)
    payment = payment_outcome_record(intent=intent, now=now) or payment
    invoice = payment.invoice
    if intent.status == "requires_action":
        checkout_abandon(invoice_id=invoice.pk, now=now)  # the page gave up without an answer
    invoice.refresh_from_db()
    sub = Subscription.objects.get(pk=invoice.subscription_id)
    return checkout_outcome(invoice=invoice, sub=sub, payment=payment, authentication=True)


def checkout_outcome(
    *, invoice: Invoice, sub: Subscription, payment: Payment | None, authentication: bool = False
) -> CheckoutResult:
    """The result of a checkout charge: paid, or the reason it is not (raised)."""
    invoice.refresh_from_db()
    sub.refresh_from_db()
    if payment is not None:
        payment.refresh_from_db()
    change = "subscribed" if invoice.kind == Invoice.Kind.INITIAL else "upgraded"
    if invoice.status == Invoice.Status.PAID:
        return CheckoutResult(subscription=sub, change=change, invoice=invoice, payment=payment)
    if payment is not None and payment.status == Payment.Status.PENDING:
        raise BillingError(
            "Your payment is still processing; your tier changes as soon as it completes.",
            code="payment_processing",
        )
    message = (payment.failure_message if payment else "") or "Your card was declined."
    extra = {"decline_code": payment.failure_code if payment else "", "invoice": invoice.number}
    if authentication:
        message = "The payment was not authenticated, so nothing was charged and nothing changed."
        raise gateway.PaymentDeclined(message, code="authentication_failed", extra=extra)
    if payment is not None and payment.status == Payment.Status.REQUIRES_ACTION:
        raise gateway.PaymentRequiresAction(message, extra=extra)
    raise gateway.PaymentDeclined(message, extra=extra)
