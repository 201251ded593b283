"""Card entry with Stripe.js, the server's side: the SetupIntent, the check of what the page posts, and
3-D Secure of a checkout charge (confirmCardPayment), against the real localstripe (``stripe_local``).

The browser's part (typing the card, the 3-D Secure dialog) is in tests/e2e/test_card_entry_browser.py;
here the test does what localstripe's Stripe.js does (tests/billing/stripe_cards.py) and posts what the
page posts.
"""

from __future__ import annotations

import pytest
from django.test import Client

from billing.models import BillingCustomer, Invoice, Payment
from billing.stripe_gateway import stripe_js
from tests.billing.billing_state import paid_tier_without_trial, subscriber
from tests.billing.stripe_cards import (
    THREE_D_SECURE,
    VISA,
    CardRefused,
    card_confirmed,
    payment_authenticate,
    setup_intent_confirm,
)
from tiers.selectors import subscription_current

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(catalog, client):
    user, team = subscriber("alice@example.com")
    client.force_login(user)
    return team


@pytest.fixture
def team_tier(catalog):
    return paid_tier_without_trial()


def _nothing_changed(team) -> None:
    assert subscription_current(team=team).tier.slug == "free"
    assert not Invoice.objects.filter(team=team).exists()
    customer = BillingCustomer.objects.filter(team=team).first()
    assert customer is None or not customer.default_payment_method_id


def test_setup_intent_endpoint_gives_the_page_a_client_secret(alice, client, stripe_local):
    response = client.post("/billing/setup-intent/")
    assert response.status_code == 200
    secret = response.json()["client_secret"]
    assert secret.startswith("seti_") and "_secret_" in secret
    # Confirmed with the card as Stripe.js would: a usable SetupIntent of this team's customer.
    intent = setup_intent_confirm(secret, VISA)
    assert intent["status"] == "succeeded"
    assert intent["customer"] == BillingCustomer.objects.get(team=alice).stripe_customer_id
    assert client.get("/billing/setup-intent/").status_code == 405


def test_setup_intent_endpoint_reports_an_unreachable_provider_in_the_json_error_shape(alice, client, settings):
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens on the discard port
    settings.STRIPE_CONNECT_TIMEOUT_SECONDS = 1
    response = client.post("/billing/setup-intent/")
    assert response.status_code == 503
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("api_error", "payment_provider_unavailable") and error["message"]


def test_a_setup_intent_of_another_customer_is_refused(alice, client, team_tier, stripe_local):
    _, bob = subscriber("bob@example.com")
    bobs_card = card_confirmed(bob, VISA)  # succeeded, but for Bob's customer
    response = client.post("/billing/checkout/team/", bobs_card.post_data())
    assert response.status_code == 400
    assert response.context["form"].errors["payment_method"] == [
        "This card was not set up for your account: enter it again."
    ]
    _nothing_changed(alice)
    # And on the card change: refused, nothing saved.
    response = client.post("/billing/payment-method/", bobs_card.post_data())
    assert response.status_code == 400 and "not set up for your account" in response.content.decode()
    _nothing_changed(alice)


@pytest.mark.parametrize(
    ("forge", "message"),
    [
        ({"payment_method": "pm_forged123"}, "This card is not the one that was confirmed: enter it again."),
        ({"setup_intent": "seti_unknown123"}, "The card was not confirmed with the payment provider: enter it again."),
        ({"setup_intent": "seti_../../v1/customers"}, "The card was not confirmed with the payment provider"),
        ({"payment_method": "pm_card_visa"}, "This card is not the one that was confirmed: enter it again."),
    ],
)
def test_a_forged_or_unknown_id_is_a_form_error_and_changes_nothing(
    alice, client, team_tier, stripe_local, forge, message
):
    posted = {**card_confirmed(alice, VISA).post_data(), **forge}
    response = client.post("/billing/checkout/team/", posted)
    assert response.status_code == 400
    assert response.context["form"].errors["payment_method"][0].startswith(message)
    assert message in response.content.decode()
    _nothing_changed(alice)


def test_a_setup_intent_waiting_for_or_failing_3d_secure_is_refused(alice, client, team_tier, stripe_local):
    waiting = card_confirmed(alice, THREE_D_SECURE, authenticate=None)
    response = client.post("/billing/checkout/team/", waiting.post_data())
    assert response.status_code == 400 and "authentication missing or failed" in response.content.decode()
    with pytest.raises(CardRefused, match="authentication failed"):
        # confirmCardSetup's failed dialog: localstripe cancels it; the page shows Stripe's message.
        card_confirmed(alice, THREE_D_SECURE, authenticate=False)
    _nothing_changed(alice)


def test_a_declined_card_never_reaches_the_server(alice, stripe_local):
    with pytest.raises(CardRefused, match="Your card was declined"):
        card_confirmed(alice, "4000000000000002")
    _nothing_changed(alice)


def _checkout_with_3d_secure_card(alice, client) -> str:
    """Checkout with a 3-D Secure card whose set-up was authenticated: the charge asks again, and the
    page is told to run it (data-payment-intent-secret). Returns the client secret."""
    response = client.post("/billing/checkout/team/", card_confirmed(alice, THREE_D_SECURE).post_data())
    assert response.status_code == 200, response.context["form"].errors
    secret = response.context["authentication"]["client_secret"]
    assert f'data-payment-intent-secret="{secret}"' in response.content.decode()
    assert "Your bank asks you to confirm this payment." in response.content.decode()
    invoice = Invoice.objects.get(team=alice)
    assert invoice.status == "open" and invoice.payments.get().status == "requires_action"
    assert subscription_current(team=alice).tier.slug == "free"  # not before the charge succeeds
    return secret


def test_3d_secure_charge_completed_subscribes(alice, client, team_tier, stripe_local):
    secret = _checkout_with_3d_secure_card(alice, client)
    payment_authenticate(secret, success=True)
    response = client.post("/billing/checkout/team/", {"payment_intent": secret.split("_secret_")[0]}, follow=True)
    assert response.redirect_chain == [("/billing/", 302)]
    invoice = Invoice.objects.get(team=alice)
    assert invoice.status == "paid" and invoice.payments.get().status == "succeeded"
    assert subscription_current(team=alice).tier == team_tier
    assert f"We charged $50.00 — invoice {invoice.number}" in response.content.decode()
    # Posted again (a reload): nothing more happens, nothing is charged twice.
    again = client.post("/billing/checkout/team/", {"payment_intent": secret.split("_secret_")[0]})
    assert again.status_code == 302 and Payment.objects.filter(invoice__team=alice).count() == 1


def test_3d_secure_charge_failed_changes_nothing(alice, client, team_tier, stripe_local):
    secret = _checkout_with_3d_secure_card(alice, client)
    payment_authenticate(secret, success=False)
    response = client.post("/billing/checkout/team/", {"payment_intent": secret.split("_secret_")[0]})
    assert response.status_code == 400
    assert response.context["form"].errors["payment_method"] == [
        "The payment was not authenticated, so nothing was charged and nothing changed."
    ]
    assert Invoice.objects.get(team=alice).status == "void"
    assert subscription_current(team=alice).tier.slug == "free"
    # The next checkout starts afresh with another card.
    response = client.post("/billing/checkout/team/", card_confirmed(alice, VISA).post_data())
    assert response.status_code == 302 and subscription_current(team=alice).tier == team_tier


def test_3d_secure_charge_abandoned_is_voided_by_the_next_checkout(alice, client, team_tier, stripe_local):
    _checkout_with_3d_secure_card(alice, client)  # the person closes the page
    response = client.post("/billing/checkout/team/", card_confirmed(alice, VISA).post_data())
    assert response.status_code == 302
    assert sorted(Invoice.objects.filter(team=alice).values_list("status", flat=True)) == ["paid", "void"]


def test_a_payment_intent_of_another_team_is_refused(alice, client, team_tier, stripe_local):
    _, bob = subscriber("bob@example.com")
    bob_client = Client()
    bob_client.force_login(bob.memberships.get().user)
    secret = _checkout_with_3d_secure_card(bob, bob_client)
    payment_authenticate(secret, success=True)
    response = client.post("/billing/checkout/team/", {"payment_intent": secret.split("_secret_")[0]})
    assert response.status_code == 400
    assert "not one of your checkouts" in response.content.decode()
    _nothing_changed(alice)
    assert Invoice.objects.get(team=bob).status == "open"  # Bob's own confirmation is still to come


def test_the_api_keeps_taking_payment_method_ids_and_voids_a_charge_needing_3d_secure(
    alice, client, team_tier, stripe_local
):
    from billing import checkout
    from billing.stripe_gateway import PaymentRequiresAction

    with pytest.raises(PaymentRequiresAction) as raised:
        checkout.subscription_change(team=alice, tier=team_tier, payment_method="pm_card_authenticationRequired")
    assert "client_secret" not in raised.value.extra
    assert Invoice.objects.get(team=alice).status == "void"
    result = checkout.subscription_change(team=alice, tier=team_tier, payment_method="pm_card_visa")
    assert result.change == "subscribed" and result.invoice.status == "paid"


@pytest.mark.parametrize(
    ("api_base", "script", "origins", "frames", "connect"),
    [
        (
            "http://127.0.0.1:8420",
            "http://127.0.0.1:8420/js.stripe.com/v3/",
            ("http://127.0.0.1:8420",),
            (),
            ("http://127.0.0.1:8420",),
        ),
        (
            "",
            "https://js.stripe.com/v3/",
            ("https://js.stripe.com",),
            ("https://js.stripe.com", "https://hooks.stripe.com"),
            ("https://api.stripe.com",),
        ),
    ],
)
def test_stripe_js_is_localstripes_or_stripes_own(settings, api_base, script, origins, frames, connect):
    settings.STRIPE_API_BASE = api_base
    js = stripe_js()
    assert (js.script_url, js.script_origins, js.frame_origins, js.connect_origins) == (
        script,
        origins,
        frames,
        connect,
    )


def _csp(response) -> dict[str, list[str]]:
    policy = {}
    for part in response["Content-Security-Policy"].split(";"):
        name, *values = part.split()
        policy[name] = values
    return policy


def _origins(values: list[str]) -> set[str]:
    return {value for value in values if value.startswith(("http:", "https:"))}


@pytest.mark.parametrize("path", ["/billing/checkout/team/", "/billing/"])
@pytest.mark.parametrize("real_stripe", [False, True])
def test_card_pages_csp_names_exactly_the_stripe_js_origin_in_use(
    alice, client, team_tier, settings, path, real_stripe
):
    settings.STRIPE_API_BASE = "" if real_stripe else "http://127.0.0.1:48123"
    response = client.get(path)
    page = response.content.decode()
    policy = _csp(response)
    if real_stripe:
        assert '<script src="https://js.stripe.com/v3/"></script>' in page
        assert _origins(policy["script-src"]) == {"https://js.stripe.com"}
        assert _origins(policy["frame-src"]) == {"https://js.stripe.com", "https://hooks.stripe.com"}
        assert _origins(policy["connect-src"]) == {"https://api.stripe.com"}
    else:
        assert '<script src="http://127.0.0.1:48123/js.stripe.com/v3/"></script>' in page
        assert _origins(policy["script-src"]) == {"http://127.0.0.1:48123"}
        assert _origins(policy["connect-src"]) == {"http://127.0.0.1:48123"}
        assert "frame-src" not in policy  # the stand-in draws no frame: default-src 'self' holds
    assert "'unsafe-inline'" not in policy["script-src"]
    # Every other origin in the whole policy is our own.
    others = _origins(
        [
            value
            for name, values in policy.items()
            if name not in {"script-src", "frame-src", "connect-src"}
            for value in values
        ]
    )
    assert others == set()


def test_other_pages_do_not_allow_stripe_js(alice, client, settings):
    settings.STRIPE_API_BASE = "http://127.0.0.1:48123"
    policy = _csp(client.get("/dashboard/"))
    assert _origins(policy["script-src"]) == set() and _origins(policy["connect-src"]) == set()
