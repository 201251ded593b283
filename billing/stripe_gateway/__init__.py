"""The only package that talks to Stripe (and the only importer of ``stripe``).

The billing engine, the webhook inbox and the pages call the functions below; they get plain values
(dataclasses, ids) back and the project's own exceptions, never ``stripe`` objects or ``stripe.error.*``.

Configuration (read on every call, so tests can point it elsewhere with the ``settings`` fixture):
STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET, and STRIPE_API_BASE (localstripe on 127.0.0.1 by default;
empty = Stripe's real API, test mode with ``sk_test_`` keys). Every call goes through a
``stripe.StripeClient`` built for that configuration (cached), never through the SDK's module globals,
so nothing else in the process can change how we talk to Stripe.

- API version pinned to ``API_VERSION``: the version the pinned SDK (stripe 16.1.0) was generated
  for, so the SDK's types and the responses agree. Upgrading the SDK is the moment to move it (a test
  fails when they diverge). localstripe ignores the ``Stripe-Version`` header; it answers in its own,
  older shape (its events even say ``api_version: 2017-08-15``), which the parsers below accept too.
- Timeouts: STRIPE_CONNECT_TIMEOUT_SECONDS (3) and STRIPE_READ_TIMEOUT_SECONDS (10) for operations,
  ``PING_TIMEOUT`` for /healthz. The SDK's default is 80 s, long enough to pin a web worker or a task.
- ``max_network_retries = 0``: the SDK (12+) retries twice by default, re-sending POSTs with the same
  idempotency key. That is safe on real Stripe but NOT on localstripe, which ignores idempotency keys:
  a retried charge could charge twice. Recovery belongs to the engine instead: a timeout raises
  PaymentProviderUnavailable, the Payment row stays pending, and the attempt is left alone for
  ``charge_quiet_period()`` before it is looked up (``payment_intents_find``, by metadata) and, only
  if Stripe has no PaymentIntent for it, sent again (billing.payments).
- ``charge_quiet_period()``: how long after a charge request is sent it may still reach Stripe. The
  client waits at most ``request_max_seconds()`` (connect + read timeout per try, times the tries,
  plus the SDK's backoff between them: 13 s by default); after the client gives up, a proxy or load
  balancer on the way may still hold the request and deliver it, for as long as its own upstream
  timeout (60 s by default in nginx and AWS load balancers: ``TRANSIT_MAX_SECONDS``). Default 73 s;
  TIERLAB_PAYMENT_QUIET_SECONDS sets it, never below ``request_max_seconds()``.
- Idempotency keys on every create that moves money or makes an object (``idempotency_key``
  arguments: PaymentIntents ``invoice:<id>:attempt:<n>``, refunds, customers). On real Stripe they make
  a re-sent attempt exactly-once by themselves; on localstripe correctness never depends on them.

Errors: ``stripe.CardError`` -> PaymentDeclined (``code`` / ``decline_code`` in ``extra``), or
PaymentRequiresAction when its code is ``authentication_required``; connection errors, timeouts, 429
and 5xx -> PaymentProviderUnavailable; authentication/permission errors -> PaymentProviderUnavailable
with code ``payment_provider_misconfigured`` (retrying will not help, but it is no fault of the
customer's); invalid requests (400/404) -> PaymentInvalidRequest; a bad webhook signature or payload
-> WebhookSignatureInvalid.

Card entry with Stripe.js (SetupIntents, the check of what the page posts, the CSP origins) is in
``billing.stripe_gateway.cards``, re-exported here.

localstripe (1.15.10) workarounds, all here, all harmless on real Stripe:
1. Off-session charge declines. localstripe answers a declined ``confirm=True`` PaymentIntent create
   with a 402 that carries the failed *charge* id but not the PaymentIntent (real Stripe puts the
   PaymentIntent in ``error.payment_intent``), although the PaymentIntent exists (status
   ``requires_payment_method``). payment_intent_create finds it from ``error.payment_intent`` when
   present, else from the charge (``Charge.payment_intent``), else by metadata, and returns it as a
   failed result. The charge stays ONE request (create with confirm=True, off_session=True), so there
   is never an unconfirmed PaymentIntent left behind by a crash; creating it unconfirmed and confirming
   it in a second call is not an option anyway: localstripe's confirm refuses ``off_session``.
2. No ``description`` on PaymentIntent (400 "Unexpected description"): the description goes into
   metadata (``description``).
3. No ``reason`` on Refund (400): Stripe's own refund reasons are an enum anyway; our free-text reason
   goes into the refund's metadata (``reason``).
4. No search, and ``PaymentIntent.list`` refuses the ``customer`` filter (400 "Unexpected customer"):
   payment_intent_find lists by customer and, on exactly that refusal, lists every PaymentIntent
   (paginated) and filters by customer and metadata itself. localstripe lists oldest first, real
   Stripe newest first: the newest match is chosen by ``created`` (seconds; same-second ties are
   returned in the server's order).
5. ``latest_charge`` is an expanded Charge object in localstripe, an id on real Stripe: the parser
   accepts both.
6. Stripe's test payment method ids localstripe lacks (it knows pm_card_visa,
   pm_card_visa_chargeDeclined, pm_card_chargeCustomerFail) answer 404; for the documented 3-D Secure
   ones (``TEST_CARD_NUMBERS``) the gateway then creates the payment method from the test card number
   (which real Stripe never gets to, since it knows the ids) and retries once.
7. No idempotency (see above), and unknown parameters answer 400 or 500: only parameters localstripe
   accepts are sent (``payment_method_types=["card"]`` is accepted and keeps real Stripe from asking
   for a ``return_url``). localstripe's 500 "Not implemented" is reported as unavailable (5xx).
8. Webhook registrations are lost on restart (``manage.py localstripe`` registers at every start) and
   deliveries are not retried; localstripe emits no refund events.
9. A SetupIntent that succeeds does not attach its payment method to the SetupIntent's customer (real
   Stripe does): setup_intent_card_use attaches it when the payment method has no customer yet.
10. Stripe.js: localstripe serves its stand-in at ``<STRIPE_API_BASE>/js.stripe.com/v3/``; its card
   Element is plain inputs in the page (no iframe) and its confirm calls go to STRIPE_API_BASE from
   the browser. ``stripe_js()`` says which script the pages load and which origins the CSP allows.
   Every PaymentIntent confirm of a 3-D Secure test card asks for authentication again, even right
   after its SetupIntent was authenticated (real Stripe does the same for 4000 0027 6000 3184): the
   checkout charges on-session (``off_session=False``) so the page can ask for it (confirmCardPayment).
11. Every card is a Visa to localstripe (``card.brand`` is hard-coded): ``manage.py localstripe`` patches
    it to derive the brand from the number as Stripe does (billing/management/commands/_card_brands.py),
    so the brand read here is the real one on either server.
ping() lists one customer rather than reading the balance: localstripe's GET /v1/balance creates an
object and fires a ``balance.available`` webhook the first time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import stripe
from django.conf import settings

from core.errors import ApplicationError

logger = logging.getLogger(__name__)

API_VERSION = "2026-10-28.endive"  # = stripe 16.1.0's _ApiVersion.CURRENT (tests check they agree)
PING_TIMEOUT: tuple[float, float] = (1.0, 2.0)  # (connect, read) seconds
MAX_NETWORK_RETRIES = 0  # see the module docstring: localstripe ignores idempotency keys
# The SDK's longest sleep between two tries (stripe._http_client.HTTPClient.MAX_DELAY): part of how
# long a request can last if MAX_NETWORK_RETRIES is ever raised.
RETRY_DELAY_MAX_SECONDS = 5.0
# How long a request the client gave up on may still be held on the way and then reach Stripe: the
# default upstream timeout of nginx (proxy_read_timeout) and of AWS load balancers (idle timeout).
TRANSIT_MAX_SECONDS = 60.0
LIST_PAGE_SIZE = 100

# Stripe's documented test payment methods that localstripe does not know, by card number.
TEST_CARD_NUMBERS = {
    "pm_card_authenticationRequired": "4000002760003184",
    "pm_card_threeDSecure2Required": "4000000000003220",
    "pm_card_mastercard": "5555555555554444",
}

T = TypeVar("T")

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
    # For the customer's browser to confirm a ``requires_action`` intent (Stripe.js confirmCardPayment).
    client_secret: str = field(default="", repr=False)

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


# --- Client and error translation ----------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _client_for(api_key: str, api_base: str, timeout: tuple[float, float]) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key,
        stripe_version=API_VERSION,
        base_addresses={"api": api_base} if api_base else None,
        max_network_retries=MAX_NETWORK_RETRIES,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


def request_timeout() -> tuple[float, float]:
    """(connect, read) seconds of every operation but the health ping."""
    return (float(settings.STRIPE_CONNECT_TIMEOUT_SECONDS), float(settings.STRIPE_READ_TIMEOUT_SECONDS))


def request_max_seconds() -> float:
    """The longest the client waits for one operation: every try's connect + read timeout, and the
    SDK's backoff between tries."""
    connect, read = request_timeout()
    return (connect + read) * (1 + MAX_NETWORK_RETRIES) + RETRY_DELAY_MAX_SECONDS * MAX_NETWORK_RETRIES


def charge_quiet_period() -> dt.timedelta:
    """How long after a charge (or refund) request is sent it may still take effect at Stripe: before
    then, not finding it in Stripe does not mean it never arrived (module docstring)."""
    configured = settings.TIERLAB_PAYMENT_QUIET_SECONDS
    longest = request_max_seconds()
    seconds = longest + TRANSIT_MAX_SECONDS if configured is None else float(configured)
    if seconds <= longest:
        # A quiet period the client's own wait outlasts would let a second pass send an attempt again
        # while the first one is still waiting for Stripe's answer.
        logger.warning("TIERLAB_PAYMENT_QUIET_SECONDS=%s is not above the request time; using %s", seconds, longest)
        seconds = longest + 1
    return dt.timedelta(seconds=seconds)


def _client(timeout: tuple[float, float] | None = None) -> stripe.StripeClient:
    return _client_for(
        settings.STRIPE_SECRET_KEY, (settings.STRIPE_API_BASE or "").rstrip("/"), timeout or request_timeout()
    )


def _error_body(exc: stripe.StripeError) -> dict[str, Any]:
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    error = body.get("error")
    return dict(error) if isinstance(error, Mapping) else {}


def _translate(exc: stripe.StripeError, operation: str) -> PaymentError:
    """The project's exception for a Stripe error (not raised here: callers ``raise ... from exc``)."""
    error = _error_body(exc)
    extra = {
        "operation": operation,
        "stripe_code": exc.code or error.get("code") or "",
        "http_status": exc.http_status,
    }
    if isinstance(exc, stripe.CardError):
        extra["decline_code"] = error.get("decline_code") or ""
        message = error.get("message") or exc.user_message or "The card was declined."
        if exc.code == "authentication_required":
            return PaymentRequiresAction(message, extra=extra)
        return PaymentDeclined(message, extra=extra)
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return PaymentProviderUnavailable(
            "The payment provider refused our credentials.", code="payment_provider_misconfigured", extra=extra
        )
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError) or (exc.http_status or 0) >= 500:
        return PaymentProviderUnavailable("The payment provider is unavailable; try again later.", extra=extra)
    if isinstance(exc, stripe.InvalidRequestError | stripe.IdempotencyError):
        return PaymentInvalidRequest(error.get("message") or str(exc) or "Invalid payment request.", extra=extra)
    return PaymentProviderUnavailable(f"Unexpected payment provider error: {exc}", extra=extra)


@contextlib.contextmanager
def _stripe_errors(operation: str) -> Iterator[None]:
    try:
        yield
    except stripe.StripeError as exc:
        translated = _translate(exc, operation)
        logger.info("stripe %s failed: %s %s", operation, type(exc).__name__, translated.extra)
        raise translated from exc


def _is_not_found(exc: stripe.StripeError) -> bool:
    return isinstance(exc, stripe.InvalidRequestError) and exc.http_status == 404


def _with_test_card(client: stripe.StripeClient, payment_method: str, call: Callable[[str], T]) -> T:
    """``call(payment_method)``; if the server does not know a documented test payment method id
    (localstripe, workaround 6), create it from its test card number and call again once."""
    try:
        return call(payment_method)
    except stripe.InvalidRequestError as exc:
        number = TEST_CARD_NUMBERS.get(payment_method)
        if number is None or not _is_not_found(exc):
            raise
    created = client.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": number, "exp_month": 12, "exp_year": dt.date.today().year + 5, "cvc": "123"},
        }
    )
    return call(created.id)


# --- Parsing Stripe objects (API responses and webhook payloads alike) ----------------------------------


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, stripe.StripeObject):
        return obj.to_dict()
    return dict(obj) if isinstance(obj, Mapping) else {}


def _metadata(obj: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (obj.get("metadata") or {}).items()}


def payment_intent_from_object(obj: Mapping[str, Any] | Any) -> PaymentIntentResult:
    """A PaymentIntent (API response, or ``event["data"]["object"]`` of a ``payment_intent.*`` webhook)
    as a result. The failure code is the ``last_payment_error`` code (e.g. ``card_declined``,
    ``authentication_required``); its message is Stripe's, meant for the customer."""
    pi = _as_dict(obj)
    error = pi.get("last_payment_error") or {}
    return PaymentIntentResult(
        id=str(pi["id"]),
        status=str(pi.get("status") or ""),
        amount_cents=int(pi.get("amount") or 0),
        currency=str(pi.get("currency") or "").lower(),
        metadata=_metadata(pi),
        failure_code=str(error.get("code") or "") if error else "",
        failure_message=str(error.get("message") or "") if error else "",
        client_secret=str(pi.get("client_secret") or ""),
    )


def _card_details(pm: Any) -> CardDetails:
    data = _as_dict(pm)
    card = data.get("card") or {}
    return CardDetails(
        payment_method_id=str(data["id"]), brand=str(card.get("brand") or ""), last4=str(card.get("last4") or "")
    )


def _intent_id(value: Any) -> str:
    """An id from a field that is either an id or an expanded object (workaround 5)."""
    if isinstance(value, str):
        return value
    return str(_as_dict(value).get("id") or "")


# --- Operations ------------------------------------------------------------------------------------


def customer_create(*, email: str, team_id: int, idempotency_key: str) -> str:
    """Create a Stripe customer for a team (metadata: team_id); returns its id."""
    with _stripe_errors("customer_create"):
        customer = _client().v1.customers.create(
            params={"email": email, "metadata": {"team_id": str(team_id)}},
            options={"idempotency_key": idempotency_key},
        )
    return customer.id


def payment_method_attach(*, customer_id: str, payment_method: str, make_default: bool = True) -> CardDetails:
    """Attach ``payment_method`` (e.g. "pm_card_visa") to the customer and make it the default for
    invoices. Raises PaymentDeclined when the card is declined at attach.

    Returns the attached method's own id (a test id such as "pm_card_visa" becomes a new ``pm_...``):
    store that one, not the test id."""
    client = _client()
    with _stripe_errors("payment_method_attach"):
        pm = _with_test_card(
            client,
            payment_method,
            lambda pm_id: client.v1.payment_methods.attach(pm_id, params={"customer": customer_id}),
        )
        if make_default:
            client.v1.customers.update(customer_id, params={"invoice_settings": {"default_payment_method": pm.id}})
    return _card_details(pm)


def payment_intent_create(
    *,
    customer_id: str,
    payment_method_id: str,
    amount_cents: int,
    currency: str,
    metadata: dict[str, str],
    idempotency_key: str,
    description: str = "",
    off_session: bool = True,
) -> PaymentIntentResult:
    """Charge now (confirm=True), off-session by default. A decline is NOT raised: it comes back
    as a result with status "requires_payment_method" and the failure code/message, so the caller can
    record the failed attempt. Raises PaymentProviderUnavailable when Stripe cannot be reached (then
    the charge may or may not have happened: find it with payment_intent_find).

    ``off_session=False`` when the customer is at the page (checkout): a card that needs 3-D Secure
    then comes back ``requires_action`` with a ``client_secret`` for Stripe.js confirmCardPayment,
    where off-session Stripe declines it (``authentication_required``)."""
    client = _client()
    stripe_metadata = {str(k): str(v) for k, v in metadata.items()}
    if description:
        stripe_metadata["description"] = description[:500]  # workaround 2
    params = {
        "amount": amount_cents,
        "currency": currency.lower(),
        "customer": customer_id,
        "payment_method": payment_method_id,
        "payment_method_types": ["card"],
        "confirm": True,
        "metadata": stripe_metadata,
    }
    if off_session:
        params["off_session"] = True
    with _stripe_errors("payment_intent_create"):
        try:
            intent = client.v1.payment_intents.create(params=params, options={"idempotency_key": idempotency_key})
        except stripe.CardError as exc:
            failed = _declined_intent(client, exc, customer_id=customer_id, metadata=stripe_metadata)
            if failed is None:
                raise  # no PaymentIntent to report: nothing was charged; PaymentDeclined
            return failed
    return payment_intent_from_object(intent)


def _declined_intent(
    client: stripe.StripeClient, exc: stripe.CardError, *, customer_id: str, metadata: dict[str, str]
) -> PaymentIntentResult | None:
    """The PaymentIntent a declined create left behind (workaround 1)."""
    error = _error_body(exc)
    embedded = error.get("payment_intent")
    if isinstance(embedded, Mapping) and embedded.get("id") and embedded.get("status"):
        return payment_intent_from_object(embedded)  # real Stripe: the PaymentIntent as it failed
    intent_id = _intent_id(embedded) if embedded else ""
    if not intent_id and error.get("charge"):
        charge = client.v1.charges.retrieve(str(error["charge"]))
        intent_id = _intent_id(_as_dict(charge).get("payment_intent"))
    if intent_id:
        return payment_intent_from_object(client.v1.payment_intents.retrieve(intent_id))
    return _payment_intent_find(client, customer_id=customer_id, metadata=metadata)


def payment_intent_find(*, customer_id: str, metadata: dict[str, str]) -> PaymentIntentResult | None:
    """The customer's newest PaymentIntent whose metadata contains all of ``metadata``, or None."""
    with _stripe_errors("payment_intent_find"):
        return _payment_intent_find(_client(), customer_id=customer_id, metadata=metadata)


def payment_intents_find(*, customer_id: str, metadata: dict[str, str]) -> list[PaymentIntentResult]:
    """Every PaymentIntent of the customer whose metadata contains all of ``metadata``, oldest first
    (by ``created``; same-second ties in the server's order). Used to settle an attempt whose outcome
    never arrived, and to find a second charge of one attempt."""
    with _stripe_errors("payment_intents_find"):
        return [payment_intent_from_object(pi) for pi in _payment_intents_matching(_client(), customer_id, metadata)]


def _payment_intent_find(
    client: stripe.StripeClient, *, customer_id: str, metadata: dict[str, str]
) -> PaymentIntentResult | None:
    matches = _payment_intents_matching(client, customer_id, metadata)
    return payment_intent_from_object(matches[-1]) if matches else None


def _payment_intents_matching(
    client: stripe.StripeClient, customer_id: str, metadata: dict[str, str]
) -> list[dict[str, Any]]:
    wanted = {str(k): str(v) for k, v in metadata.items()}
    matches = [pi for pi in _customer_payment_intents(client, customer_id) if wanted.items() <= _metadata(pi).items()]
    # Stable: localstripe lists oldest first, real Stripe newest first (workaround 4).
    return sorted(matches, key=lambda pi: int(pi.get("created") or 0))


def _customer_payment_intents(client: stripe.StripeClient, customer_id: str) -> Iterator[dict[str, Any]]:
    try:
        page = client.v1.payment_intents.list(params={"customer": customer_id, "limit": LIST_PAGE_SIZE})
    except stripe.InvalidRequestError as exc:
        # Workaround 4: localstripe refuses the filter with exactly this message; anything else is ours.
        if "Unexpected customer" not in str(_error_body(exc).get("message") or ""):
            raise
        page = client.v1.payment_intents.list(params={"limit": LIST_PAGE_SIZE})
    for pi in page.auto_paging_iter():
        data = _as_dict(pi)
        if _intent_id(data.get("customer")) == customer_id:
            yield data


def payment_intent_retrieve(*, payment_intent_id: str) -> PaymentIntentResult:
    with _stripe_errors("payment_intent_retrieve"):
        intent = _client().v1.payment_intents.retrieve(payment_intent_id)
    return payment_intent_from_object(intent)


def refund_create(*, payment_intent_id: str, amount_cents: int, idempotency_key: str, reason: str = "") -> RefundResult:
    """Refund ``amount_cents`` of a succeeded PaymentIntent. ``reason`` is free text, kept in the
    refund's metadata (workaround 3)."""
    params: dict[str, Any] = {"payment_intent": payment_intent_id, "amount": amount_cents}
    if reason:
        params["metadata"] = {"reason": reason[:500]}
    with _stripe_errors("refund_create"):
        refund = _client().v1.refunds.create(params=params, options={"idempotency_key": idempotency_key})
    return RefundResult(id=refund.id, status=str(refund.status or ""), amount_cents=int(refund.amount))


def refunds_for_payment_intent(*, payment_intent_id: str) -> list[RefundResult]:
    """The refunds of a PaymentIntent (newest first on both servers): how a refund whose answer was
    lost is found before it is sent again."""
    with _stripe_errors("refunds_for_payment_intent"):
        page = _client().v1.refunds.list(params={"payment_intent": payment_intent_id, "limit": LIST_PAGE_SIZE})
        refunds = list(page.auto_paging_iter())
    return [RefundResult(id=r.id, status=str(r.status or ""), amount_cents=int(r.amount)) for r in refunds]


def webhook_event_verify(*, payload: bytes, signature_header: str) -> WebhookEvent:
    """Verify the ``Stripe-Signature`` header with STRIPE_WEBHOOK_SECRET (stripe.Webhook.construct_event).
    Raises WebhookSignatureInvalid on a bad signature or payload.

    Uses the SDK's check (``WebhookSignature.verify_header``, the first half of construct_event: HMAC
    of ``t.payload``, constant-time compare, 300 s tolerance against replays) and then parses the JSON
    itself: construct_event would build a stripe Event only to be turned back into a dict, and it
    crashes (AttributeError) on a signed payload that is JSON but not an object.

    The SDK's tolerance only bounds the past (``timestamp < now - tolerance``): a delivery signed for a
    time in the future passes it, and would stay replayable until that time plus the tolerance. So a
    signature timestamp more than WEBHOOK_FUTURE_TOLERANCE seconds ahead of our clock is refused too."""
    try:
        stripe.WebhookSignature.verify_header(
            payload, signature_header, settings.STRIPE_WEBHOOK_SECRET, stripe.Webhook.DEFAULT_TOLERANCE
        )
        _webhook_timestamp_not_in_future(signature_header)
        data = json.loads(payload)
    except stripe.SignatureVerificationError as exc:
        raise WebhookSignatureInvalid("The webhook signature is invalid.") from exc
    except (ValueError, TypeError, RecursionError) as exc:  # not JSON, not UTF-8, nested too deeply
        raise WebhookSignatureInvalid("The webhook payload is not a valid event.") from exc
    if not isinstance(data, dict) or not data.get("id") or not data.get("type"):
        raise WebhookSignatureInvalid("The webhook payload is not a valid event.")
    return WebhookEvent(id=str(data["id"]), type=str(data["type"]), payload=data)


# Clock skew allowed between Stripe and us for a signature timestamp in the future (seconds), as
# much as the SDK allows in the past.
WEBHOOK_FUTURE_TOLERANCE = stripe.Webhook.DEFAULT_TOLERANCE


def _webhook_timestamp_not_in_future(signature_header: str) -> None:
    """Raise SignatureVerificationError when the header's ``t=`` (already verified by the SDK, so
    present and an integer) is more than WEBHOOK_FUTURE_TOLERANCE seconds ahead of now."""
    # Parsed as the SDK parses it (WebhookSignature._get_timestamp_and_signatures): "t=" items.
    timestamps = [item[2:] for item in signature_header.split(",") if item.startswith("t=")]
    try:
        timestamp = int(timestamps[0])
    except (IndexError, ValueError):
        raise stripe.SignatureVerificationError("No valid timestamp in the header.", signature_header) from None
    if timestamp > time.time() + WEBHOOK_FUTURE_TOLERANCE:
        raise stripe.SignatureVerificationError("The timestamp is in the future.", signature_header)


def ping() -> bool:
    """True when the configured Stripe API answers (for /healthz); never raises."""
    try:
        _client(PING_TIMEOUT).v1.customers.list(params={"limit": 1})
    except Exception as exc:  # never raises: /healthz reports it
        logger.info("stripe ping failed: %s: %s", type(exc).__name__, exc)
        return False
    return True


# Card entry with Stripe.js (a submodule for length; it uses the client and error translation above).
from billing.stripe_gateway.cards import (  # noqa: E402, F401 (re-exported: callers use gateway.<name>)
    SetupIntentInvalid,
    SetupIntentStarted,
    StripeJs,
    setup_intent_card_use,
    setup_intent_create,
    stripe_js,
)
