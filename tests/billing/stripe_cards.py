"""What the pages' Stripe.js does, done by a test against the real localstripe (``stripe_local``).

``card_confirmed(team, number)`` starts a SetupIntent through the service the page calls
(POST /billing/setup-intent/) and confirms it the way localstripe's Stripe.js stand-in does
(``confirmCardSetup``: a POST with the publishable key and the client secret, no secret key), so the
test can post exactly what the page posts. ``payment_authenticate`` answers a charge's 3-D Secure the
way its ``confirmCardPayment`` does.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from django.conf import settings

from billing import customers

# Stripe's test cards (https://docs.stripe.com/testing): localstripe decides by these numbers.
VISA = "4242424242424242"
MASTERCARD = "5555555555554444"
DECLINED = "4000000000000002"  # declined when the card is set up
CHARGE_FAILS = "4000000000000341"  # set up fine, every charge declined
THREE_D_SECURE = "4000002760003184"  # 3-D Secure at set-up and at every charge


class CardRefused(Exception):
    """localstripe refused the card in the browser step (a decline, a failed authentication)."""


@dataclass(frozen=True)
class ConfirmedCard:
    setup_intent: str
    payment_method: str

    def post_data(self) -> dict[str, str]:
        """The fields the page's script posts after confirmCardSetup."""
        return {"setup_intent": self.setup_intent, "payment_method": self.payment_method}


def _browser_post(path: str, body: dict) -> dict:
    """A request as Stripe.js makes it: JSON text, the publishable key in the body, no Authorization."""
    data = json.dumps({"key": settings.STRIPE_PUBLISHABLE_KEY, **body}).encode()
    request = urllib.request.Request(settings.STRIPE_API_BASE + path, data=data, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (http://127.0.0.1)
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise CardRefused(json.loads(exc.read()).get("error", {}).get("message", str(exc))) from exc


def setup_intent_confirm(client_secret: str, number: str, *, authenticate: bool | None = True) -> dict:
    """confirmCardSetup: the card's data sent with the SetupIntent's client secret; a 3-D Secure card
    is then authenticated (``authenticate=True``), failed (False) or left waiting (None)."""
    intent_id = client_secret.split("_secret_")[0]
    card = {"number": number, "exp_month": "12", "exp_year": "2034", "cvc": "123"}
    path = f"/v1/setup_intents/{intent_id}/confirm"
    intent = _browser_post(
        path,
        {"use_stripe_sdk": True, "client_secret": client_secret, "payment_method_data": {"type": "card", "card": card}},
    )
    if intent["status"] == "requires_action" and authenticate is not None:
        answer = path if authenticate else f"/v1/setup_intents/{intent_id}/cancel"
        intent = _browser_post(answer, {"use_stripe_sdk": True, "client_secret": client_secret})
        if intent["status"] != "succeeded":  # what the stand-in then says to the page
            raise CardRefused(
                "The latest attempt to set up the payment method has failed because authentication failed."
            )
    return intent


def card_confirmed(team, number: str = VISA, *, authenticate: bool | None = True) -> ConfirmedCard:
    """A card of ``team`` typed into Stripe.js and confirmed there. Raises CardRefused on a decline."""
    started = customers.setup_intent_start(team=team)
    intent = setup_intent_confirm(started.client_secret, number, authenticate=authenticate)
    return ConfirmedCard(setup_intent=intent["id"], payment_method=intent["payment_method"])


def payment_authenticate(client_secret: str, *, success: bool) -> dict:
    """confirmCardPayment's answer to a charge's 3-D Secure dialog."""
    intent_id = client_secret.split("_secret_")[0]
    outcome = "true" if success else "false"
    return _browser_post(
        f"/v1/payment_intents/{intent_id}/_authenticate?success={outcome}", {"client_secret": client_secret}
    )
