"""Card entry with Stripe.js: SetupIntents, their server-side check, and which Stripe.js the pages load.

Part of the gateway package (``billing.stripe_gateway`` re-exports everything here): it talks to
Stripe through the package's client and error translation, and imports no ``stripe`` of its own.

The flow, as in every Stripe integration that saves a card for later charges:
1. ``setup_intent_create``: a SetupIntent for the team's customer; its client secret goes to the page.
2. The page mounts Stripe.js's card Element (publishable key) and calls ``confirmCardSetup``:
   Stripe.js collects the card, runs 3-D Secure if the card asks for it, and gives the page the
   payment method id. A declined card or a failed authentication stops there, in the page.
3. The page posts the SetupIntent id and payment method id; ``setup_intent_card_use`` checks with
   Stripe that this SetupIntent belongs to this customer, succeeded, and saved that payment method,
   before it becomes the customer's default. A forged or foreign id is refused (SetupIntentInvalid).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

from billing.stripe_gateway import (
    CardDetails,
    PaymentInvalidRequest,
    _as_dict,
    _card_details,
    _client,
    _intent_id,
    _stripe_errors,
)

# Stripe's own Stripe.js, loaded in Stripe test mode (STRIPE_API_BASE empty). Stripe's documented CSP
# for it: the script and its frames from js.stripe.com, 3-D Secure frames from hooks.stripe.com, and
# API calls to api.stripe.com.
STRIPE_JS_URL = "https://js.stripe.com/v3/"
STRIPE_JS_FRAME_ORIGINS = ("https://js.stripe.com", "https://hooks.stripe.com")
STRIPE_API_ORIGIN = "https://api.stripe.com"
# localstripe serves its stand-in under the API's own origin (workaround 10).
LOCALSTRIPE_JS_PATH = "/js.stripe.com/v3/"
# Stripe's ids: a prefix and letters, digits and underscores (checked before they go into a URL).
_ID = re.compile(r"^(seti|pm)_[A-Za-z0-9_]{1,200}$")


@dataclass(frozen=True)
class SetupIntentStarted:
    """A SetupIntent for the page to confirm with Stripe.js: its ``client_secret`` goes to the browser."""

    id: str
    client_secret: str


@dataclass(frozen=True)
class StripeJs:
    """Which Stripe.js the card pages load, and the origins their CSP must allow for it."""

    script_url: str
    publishable_key: str
    script_origins: tuple[str, ...]
    frame_origins: tuple[str, ...]
    connect_origins: tuple[str, ...]


class SetupIntentInvalid(PaymentInvalidRequest):
    """A posted SetupIntent or payment method is not one this customer confirmed: refused, nothing saved."""

    code = "setup_intent_invalid"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def stripe_js() -> StripeJs:
    """The Stripe.js the card pages load: localstripe's stand-in when STRIPE_API_BASE points at one,
    Stripe's own otherwise; and exactly the origins it needs in the CSP."""
    api_base = (settings.STRIPE_API_BASE or "").rstrip("/")
    key = settings.STRIPE_PUBLISHABLE_KEY
    if api_base:
        origin = _origin(api_base)
        # The stand-in is a script of that origin, draws no frame (its 3-D Secure dialog is a box in the
        # page) and calls the API at that origin from the browser.
        return StripeJs(
            script_url=api_base + LOCALSTRIPE_JS_PATH,
            publishable_key=key,
            script_origins=(origin,),
            frame_origins=(),
            connect_origins=(origin,),
        )
    return StripeJs(
        script_url=STRIPE_JS_URL,
        publishable_key=key,
        script_origins=(_origin(STRIPE_JS_URL),),
        frame_origins=STRIPE_JS_FRAME_ORIGINS,
        connect_origins=(STRIPE_API_ORIGIN,),
    )


def setup_intent_create(*, customer_id: str) -> SetupIntentStarted:
    """A SetupIntent to save a card of ``customer_id`` for off-session charges (renewals)."""
    # Only parameters localstripe accepts (workaround 7); ``payment_method_types`` keeps real Stripe
    # from asking for a return_url. No idempotency key: every page visit may start one, unused ones
    # expire at Stripe and cost nothing.
    params = {"customer": customer_id, "usage": "off_session", "payment_method_types": ["card"]}
    with _stripe_errors("setup_intent_create"):
        intent = _client().v1.setup_intents.create(params=params)
    return SetupIntentStarted(id=str(intent.id), client_secret=str(intent.client_secret))


def setup_intent_card_use(*, setup_intent_id: str, payment_method_id: str, customer_id: str) -> CardDetails:
    """Check with Stripe that SetupIntent ``setup_intent_id`` belongs to ``customer_id``, succeeded and
    saved ``payment_method_id``; then make that card the customer's default for invoices.

    Raises SetupIntentInvalid when any of it does not hold (nothing is changed then), and the usual
    gateway errors when Stripe cannot be reached."""
    if not _ID.match(setup_intent_id or "") or not setup_intent_id.startswith("seti_"):
        raise SetupIntentInvalid("The card was not confirmed with the payment provider: enter it again.")
    if not _ID.match(payment_method_id or "") or not payment_method_id.startswith("pm_"):
        raise SetupIntentInvalid("The card was not confirmed with the payment provider: enter it again.")
    client = _client()
    try:
        with _stripe_errors("setup_intent_retrieve"):
            intent = _as_dict(client.v1.setup_intents.retrieve(setup_intent_id))
    except SetupIntentInvalid:
        raise
    except PaymentInvalidRequest as exc:  # unknown id (404): not a SetupIntent of ours
        raise SetupIntentInvalid(
            "The card was not confirmed with the payment provider: enter it again.", extra=exc.extra
        ) from exc
    if _intent_id(intent.get("customer")) != customer_id:
        raise SetupIntentInvalid("This card was not set up for your account: enter it again.")
    if intent.get("status") != "succeeded":
        raise SetupIntentInvalid("The card was not confirmed (authentication missing or failed): enter it again.")
    if _intent_id(intent.get("payment_method")) != payment_method_id:
        raise SetupIntentInvalid("This card is not the one that was confirmed: enter it again.")
    with _stripe_errors("setup_intent_card_use"):
        pm = client.v1.payment_methods.retrieve(payment_method_id)
        if _intent_id(_as_dict(pm).get("customer")) != customer_id:
            # Workaround 9: localstripe leaves it unattached; real Stripe attached it already.
            pm = client.v1.payment_methods.attach(payment_method_id, params={"customer": customer_id})
        client.v1.customers.update(
            customer_id, params={"invoice_settings": {"default_payment_method": payment_method_id}}
        )
    return _card_details(pm)
