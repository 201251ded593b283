"""Card brands (issue 16, finding 5): localstripe calls every card a Visa; the wrapper makes it derive the
brand from the number, as real Stripe does, so the gateway, the stored card and the audit log are right."""

from __future__ import annotations

import json

import pytest

from billing import stripe_gateway as gateway
from billing.management.commands._card_brands import card_brand
from tests.stripe_fixtures import localstripe_request


@pytest.mark.parametrize(
    ("number", "brand"),
    [
        ("4242424242424242", "visa"),
        ("5555555555554444", "mastercard"),
        ("2223003122003222", "mastercard"),
        ("378282246310005", "amex"),
        ("6011111111111117", "discover"),
        ("3056930009020004", "diners"),
        ("3566002020360505", "jcb"),
        ("6200000000000005", "unionpay"),
        ("9999999999999999", "unknown"),
    ],
)
def test_brand_of_stripe_test_numbers(number, brand):
    assert card_brand(number)[0] == brand


def test_mastercard_attached_through_the_gateway_is_a_mastercard(stripe_local):
    customer = gateway.customer_create(email="mc@example.com", team_id=8, idempotency_key="team:8:customer")
    card = gateway.payment_method_attach(customer_id=customer, payment_method="pm_card_mastercard")
    assert (card.brand, card.last4) == ("mastercard", "4444")
    visa = gateway.payment_method_attach(customer_id=customer, payment_method="pm_card_visa")
    assert (visa.brand, visa.last4) == ("visa", "4242")
    # What the server itself stores, read back over HTTP.
    stored = json.loads(localstripe_request(stripe_local, "GET", f"/v1/payment_methods/{card.payment_method_id}"))
    assert stored["card"]["brand"] == "mastercard"


@pytest.mark.django_db
def test_card_on_file_and_audit_say_mastercard(stripe_local):
    from accounts.models import AuditEntry
    from billing.customers import payment_method_update
    from billing.models import BillingCustomer
    from tiers import services as tier_services

    tier_services.tier_catalog_seed()
    user = tier_services.user_create(email="mc2@example.com", password="x-Long-Password-1")
    team = user.memberships.get().team
    payment_method_update(team=team, payment_method="pm_card_mastercard", actor=user)
    customer = BillingCustomer.objects.get(team=team)
    assert (customer.card_brand, customer.card_last4) == ("mastercard", "4444")
    entry = AuditEntry.objects.filter(team_id=team.pk).order_by("-id").first()
    assert entry.description == "Card on file is now Mastercard ending in 4444."
