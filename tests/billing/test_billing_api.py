"""The account API's billing endpoints: /api/v1/subscription (GET, POST) and /api/v1/invoices.

As for the pages: the endpoints' own contract with the billing services replaced where needed, then
flows through the real engine and a real localstripe (``stripe_local``).
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts.services import api_key_create
from billing import checkout, services
from billing.models import Invoice, Payment
from billing.stripe_gateway import PaymentDeclined
from tests.billing.billing_state import FEB_1, invoice_paid, invoice_prorated, paid_tier_without_trial, subscriber
from tiers.models import Subscription
from tiers.selectors import subscription_current

pytestmark = pytest.mark.django_db

SUBSCRIPTION_FIELDS = {
    "tier",
    "status",
    "current_period_start",
    "current_period_end",
    "cancel_at_period_end",
    "pending_tier",
    "trial_end",
}


@pytest.fixture
def alice(catalog):
    _, team = subscriber("alice@example.com")
    return team


@pytest.fixture
def api(alice):
    client = APIClient()
    client.force_authenticate(alice.memberships.get().user)
    return client


@pytest.fixture
def team_tier(catalog):
    return paid_tier_without_trial()


def _error(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


# --- GET /api/v1/subscription ---------------------------------------------------------------------------


def test_subscription_get_reads_the_team_subscription(api, alice):
    response = api.get("/api/v1/subscription")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == SUBSCRIPTION_FIELDS
    assert body["tier"] == "free" and body["status"] == "active" and body["pending_tier"] is None
    assert body["cancel_at_period_end"] is False and body["trial_end"] is None


def test_subscription_get_with_an_api_key(alice):
    _, secret = api_key_create(team=alice, name="ci", created_by=None)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/api/v1/subscription").json()["tier"] == "free"


@pytest.mark.parametrize("path", ["/api/v1/subscription", "/api/v1/invoices", "/api/v1/invoices/TL-0000001"])
def test_billing_endpoints_need_authentication(catalog, path):
    response = APIClient().get(path)
    assert response.status_code in (401, 403)
    assert _error(response)["type"] in ("authentication_error", "permission_error")


# --- POST /api/v1/subscription: validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({}, "tier"),
        ({"tier": "no-such-tier"}, "tier"),
        ({"tier": "enterprise"}, "tier"),  # not public
        ({"tier": "pro", "cancel": True}, "tier"),  # two actions at once
        ({"cancel": False}, "cancel"),
        ({"resume": "maybe"}, "resume"),
        ({"tier": "pro", "payment_method": "4242424242424242"}, "payment_method"),
        ({"cancel": True, "payment_method": "pm_card_visa"}, "payment_method"),
    ],
)
def test_subscription_post_validation_errors(api, alice, monkeypatch, payload, param):
    for name in ("subscription_change", "subscription_cancel", "subscription_resume"):
        monkeypatch.setattr(checkout, name, lambda **kw: pytest.fail("engine called"))
    response = api.post("/api/v1/subscription", payload, format="json")
    assert response.status_code == 400
    error = _error(response)
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["code"] == "invalid"


def test_subscription_post_on_an_archived_tier_is_refused(api, team_tier, monkeypatch):
    monkeypatch.setattr(checkout, "subscription_change", lambda **kw: pytest.fail("engine called"))
    team_tier.is_archived = True
    team_tier.save()
    response = api.post("/api/v1/subscription", {"tier": "team"}, format="json")
    assert response.status_code == 400 and _error(response)["param"] == "tier"


# --- POST /api/v1/subscription: calling the engine ------------------------------------------------------


def test_subscription_post_changes_tier_through_the_engine(api, alice, team_tier, monkeypatch):
    calls = []

    def change(**kwargs):
        calls.append(kwargs)
        Subscription.objects.filter(team=alice).update(tier=team_tier)
        invoice = invoice_paid(alice, number="TL-0000012", tier=team_tier)
        return services.CheckoutResult(
            subscription=subscription_current(team=alice), change="subscribed", invoice=invoice
        )

    monkeypatch.setattr(checkout, "subscription_change", change)
    response = api.post("/api/v1/subscription", {"tier": "team", "payment_method": "pm_card_visa"}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == SUBSCRIPTION_FIELDS | {"change", "invoice"}
    assert body["tier"] == "team" and body["change"] == "subscribed"
    assert body["invoice"]["number"] == "TL-0000012" and body["invoice"]["status"] == "paid"
    assert body["invoice"]["total"] == 5_000
    assert calls == [
        {"team": alice, "tier": team_tier, "payment_method": "pm_card_visa", "actor": alice.memberships.get().user}
    ]


def test_subscription_post_without_payment_method_uses_the_card_on_file(api, team_tier, monkeypatch):
    calls = []

    def change(**kwargs):
        calls.append(kwargs)
        return services.CheckoutResult(subscription=subscription_current(team=kwargs["team"]), change="upgraded")

    monkeypatch.setattr(checkout, "subscription_change", change)
    body = api.post("/api/v1/subscription", {"tier": "team"}, format="json").json()
    assert calls[0]["payment_method"] is None and body["invoice"] is None and body["change"] == "upgraded"


def test_subscription_post_declined_is_402_in_the_error_shape(api, alice, team_tier, monkeypatch):
    def change(**kwargs):
        raise PaymentDeclined("Your card was declined.")

    monkeypatch.setattr(checkout, "subscription_change", change)
    response = api.post(
        "/api/v1/subscription", {"tier": "team", "payment_method": "pm_card_visa_chargeDeclined"}, format="json"
    )
    assert response.status_code == 402
    assert _error(response) == {
        "message": "Your card was declined.",
        "type": "payment_error",
        "code": "card_declined",
        "param": None,
    }


def test_subscription_post_cancel_and_resume(api, alice, monkeypatch):
    subscription = subscription_current(team=alice)
    calls = []

    def cancel(**kwargs):
        calls.append(("cancel", kwargs))
        return services.CheckoutResult(subscription=subscription, change="cancel_scheduled")

    def resume(**kwargs):
        calls.append(("resume", kwargs))
        return services.CheckoutResult(subscription=subscription, change="resumed")

    monkeypatch.setattr(checkout, "subscription_cancel", cancel)
    monkeypatch.setattr(checkout, "subscription_resume", resume)
    user = alice.memberships.get().user
    assert api.post("/api/v1/subscription", {"cancel": True}, format="json").json()["change"] == "cancel_scheduled"
    assert api.post("/api/v1/subscription", {"resume": True}, format="json").json()["change"] == "resumed"
    assert calls == [("cancel", {"team": alice, "actor": user}), ("resume", {"team": alice, "actor": user})]


def test_subscription_post_with_an_api_key_has_no_user_actor(alice, team_tier, monkeypatch):
    calls = []

    def change(**kwargs):
        calls.append(kwargs)
        return services.CheckoutResult(subscription=subscription_current(team=kwargs["team"]), change="subscribed")

    monkeypatch.setattr(checkout, "subscription_change", change)
    _, secret = api_key_create(team=alice, name="ci", created_by=None, scopes=["model", "read", "manage"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.post("/api/v1/subscription", {"tier": "team"}, format="json").status_code == 200
    assert calls[0]["team"] == alice and calls[0]["actor"] is None


# --- /api/v1/invoices -----------------------------------------------------------------------------------


def test_invoice_list_is_paginated_scoped_and_complete(api, alice, catalog, team_tier):
    _, bob = subscriber("bob@example.com")
    invoice_paid(alice, number="TL-0000001", tier=team_tier)
    invoice_prorated(alice, number="TL-0000002", old=team_tier, new=catalog["pro"])
    invoice_paid(bob, number="TL-0000003", tier=team_tier)
    draft = invoice_paid(alice, number="TL-DRAFT", tier=team_tier, status="draft", issued_at=FEB_1)  # the next period
    Invoice.objects.filter(pk=draft.pk).update(number=None)

    response = api.get("/api/v1/invoices")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2 and {"next", "previous", "results"} <= set(body)
    by_number = {invoice["number"]: invoice for invoice in body["results"]}
    assert set(by_number) == {"TL-0000001", "TL-0000002"}  # not Bob's, not the draft
    paid = by_number["TL-0000001"]
    assert {
        "number",
        "status",
        "currency",
        "total",
        "period_start",
        "period_end",
        "issued_at",
        "paid_at",
        "lines",
    } <= set(paid)
    assert paid["status"] == "paid" and paid["currency"] == "usd" and paid["total"] == 5_000
    assert paid["paid_at"] is not None
    assert paid["lines"] == [
        {
            "kind": "fee",
            "description": "Team (Jan 1, 2026 to Feb 1, 2026)",
            "amount": 5_000,
            "quantity": 1,
            "unit_amount": 5_000,
            "period_start": "2026-01-01T00:00:00Z",
            "period_end": "2026-02-01T00:00:00Z",
        }
    ]
    prorated = by_number["TL-0000002"]
    assert [line["amount"] for line in prorated["lines"]] == [-2_500, 10_000] and prorated["total"] == 7_500


def test_invoice_detail_by_number_and_isolation(api, alice, team_tier):
    _, bob = subscriber("bob@example.com")
    invoice_paid(alice, number="TL-0000001", tier=team_tier)
    invoice_paid(bob, number="TL-0000003", tier=team_tier)
    assert api.get("/api/v1/invoices/TL-0000001").json()["number"] == "TL-0000001"
    for number in ["TL-0000003", "TL-0000404"]:
        response = api.get(f"/api/v1/invoices/{number}")
        assert response.status_code == 404 and _error(response)["type"] == "not_found_error"
    # Bob, by API key, sees only his.
    _, secret = api_key_create(team=bob, name="bob", created_by=None)
    bob_api = APIClient()
    bob_api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert [i["number"] for i in bob_api.get("/api/v1/invoices").json()["results"]] == ["TL-0000003"]


def test_invoice_list_of_a_team_without_invoices_is_empty(api):
    assert api.get("/api/v1/invoices").json()["results"] == []


def test_schema_documents_the_billing_endpoints(client, catalog):
    text = client.get("/api/schema/").content.decode()
    for path in ["/api/v1/subscription", "/api/v1/invoices", "/api/v1/invoices/{number}"]:
        assert f"{path}:" in text
    assert "SubscriptionStatusEnum" in text and "InvoiceStatusEnum" in text


# --- Flows through the real engine and localstripe ---------------------------------------------------


def test_subscribe_by_api_then_decline_changes_nothing(api, alice, team_tier, stripe_local):
    response = api.post("/api/v1/subscription", {"tier": "team", "payment_method": "pm_card_visa"}, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["tier"] == "team" and body["status"] == "active" and body["change"] == "subscribed"
    assert body["invoice"]["status"] == "paid" and body["invoice"]["total"] == 5_000
    number = body["invoice"]["number"]
    assert api.get(f"/api/v1/invoices/{number}").json()["status"] == "paid"

    before = (subscription_current(team=alice).tier_id, Payment.objects.count(), Invoice.objects.count())
    declined = api.post(
        "/api/v1/subscription", {"tier": "pro", "payment_method": "pm_card_visa_chargeDeclined"}, format="json"
    )
    assert declined.status_code == 402 and _error(declined)["code"] == "card_declined"
    sub = subscription_current(team=alice)
    assert sub.tier_id == before[0]
    assert not Payment.objects.filter(invoice__team=alice, status="succeeded").exclude(invoice__number=number).exists()
    assert not Invoice.objects.filter(team=alice, status__in=["open", "paid"]).exclude(number=number).exists()


def test_cancel_and_resume_by_api(api, alice, team_tier, stripe_local):
    api.post("/api/v1/subscription", {"tier": "team", "payment_method": "pm_card_visa"}, format="json")
    cancel = api.post("/api/v1/subscription", {"cancel": True}, format="json").json()
    assert cancel["cancel_at_period_end"] is True and cancel["change"] == "cancel_scheduled"
    resume = api.post("/api/v1/subscription", {"resume": True}, format="json").json()
    assert resume["cancel_at_period_end"] is False and resume["change"] == "resumed"
    assert api.get("/api/v1/subscription").json()["tier"] == "team"
