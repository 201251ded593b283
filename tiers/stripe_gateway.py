"""The only module that talks to Stripe (and the only importer of ``stripe``).

INTERFACE STUB written by the lead: the functions below are the contract the billing engine, the
webhook view and the pages rely on. The gateway helper implements them (keeping these signatures and
return types) and documents here what it works around in localstripe.

Configuration: STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET, STRIPE_API_BASE (localstripe on 127.0.0.1 by
default; empty = Stripe's real test mode). API version pinned, timeouts and retries set deliberately,
idempotency keys passed (localstripe ignores them: correctness never depends on them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from config.errors import ApplicationError

# --- Errors: stripe.error.* never leaves this module ------------------------------------------------


class PaymentError(ApplicationError):
    """Base of the gateway's errors."""

    code = "payment_error"
    status = 402
    type = "payment_error"


class PaymentDeclined(PaymentError):
    """The card was declined (at attach, confirm or charge). ``decline_code`` as Stripe gives it."""

    code = "card_declined"


class PaymentRequiresAction(PaymentError):
    """The charge needs the customer present (3-D Secure): it cannot complete off-session."""

    code = "authentication_required"


class PaymentProviderUnavailable(PaymentError):
    """Stripe (or localstripe) could not be reached, timed out or answered 5xx. Safe to retry later."""

    code = "payment_provider_unavailable"
    status = 503
    type = "api_error"


class PaymentInvalidRequest(PaymentError):
    """Stripe refused the request as invalid (a bug or bad input on our side, e.g. an unknown id)."""

    code = "payment_invalid_request"
    status = 400
    type = "invalid_request_error"


class WebhookSignatureInvalid(PaymentError):
    code = "invalid_signature"
    status = 400
    type = "invalid_request_error"


# --- Results: plain values, no stripe objects ----------------------------------------------------------


@dataclass(frozen=True)
class CardDetails:
    payment_method_id: str
    brand: str
    last4: str


@dataclass(frozen=True)
class PaymentIntentResult:
    id: str
    status: str  # "succeeded", "requires_payment_method" (failed), "requires_action", "processing", "canceled"
    amount_cents: int
    currency: str
    metadata: dict[str, str] = field(default_factory=dict)
    failure_code: str = ""
    failure_message: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True)
class RefundResult:
    id: str
    status: str
    amount_cents: int


@dataclass(frozen=True)
class WebhookEvent:
    id: str
    type: str
    payload: dict  # the whole event as JSON-compatible dicts


# --- Operations ------------------------------------------------------------------------------------


def customer_create(*, email: str, team_id: int, idempotency_key: str) -> str:
    """Create a Stripe customer for a team (metadata: team_id); returns its id."""
    raise NotImplementedError


def payment_method_attach(*, customer_id: str, payment_method: str, make_default: bool = True) -> CardDetails:
    """Attach ``payment_method`` (e.g. "pm_card_visa", or an id from a SetupIntent) to the customer and
    make it the default for invoices. Raises PaymentDeclined when the card is declined at attach."""
    raise NotImplementedError


def payment_method_detach(*, payment_method_id: str) -> None:
    raise NotImplementedError


def setup_intent_confirm(*, customer_id: str, payment_method: str) -> CardDetails:
    """Create and confirm a SetupIntent (saving a card for off-session use); returns the saved card."""
    raise NotImplementedError


def payment_intent_create(
    *,
    customer_id: str,
    payment_method_id: str,
    amount_cents: int,
    currency: str,
    metadata: dict[str, str],
    idempotency_key: str,
    description: str = "",
) -> PaymentIntentResult:
    """Charge off-session now (confirm=True, off_session=True). A decline is NOT raised: it comes back
    as a result with status "requires_payment_method" and the failure code/message, so the caller can
    record the failed attempt. Raises PaymentProviderUnavailable when Stripe cannot be reached (then
    the charge may or may not have happened: find it with payment_intent_find)."""
    raise NotImplementedError


def payment_intent_find(*, customer_id: str, metadata: dict[str, str]) -> PaymentIntentResult | None:
    """The customer's PaymentIntent whose metadata contains all of ``metadata`` (newest first), or
    None. Used to recover a charge whose local record was not updated (crash after charging)."""
    raise NotImplementedError


def payment_intent_retrieve(*, payment_intent_id: str) -> PaymentIntentResult:
    raise NotImplementedError


def refund_create(*, payment_intent_id: str, amount_cents: int, idempotency_key: str, reason: str = "") -> RefundResult:
    raise NotImplementedError


def webhook_event_verify(*, payload: bytes, signature_header: str) -> WebhookEvent:
    """Verify the ``Stripe-Signature`` header with STRIPE_WEBHOOK_SECRET (stripe.Webhook.construct_event).
    Raises WebhookSignatureInvalid on a bad signature or payload."""
    raise NotImplementedError


def ping() -> bool:
    """True when the configured Stripe API answers (for /healthz); never raises."""
    raise NotImplementedError
