"""The subscriber's billing pages: /billing/, /billing/checkout/<tier>/, /billing/invoices/<number>/.

Two kinds of tests: the pages' own contract (what they render, which service they call with what, how
they show its errors), with the billing services replaced where needed; and flows through the real
billing engine and a real localstripe (``stripe_local``).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import time_machine
from django.test import Client

from billing import checkout, customers, selectors, services
from billing.models import BillingCustomer, Invoice, Payment
from billing.stripe_gateway import PaymentDeclined, PaymentProviderUnavailable
from tests.billing.billing_state import (
    FEB_1,
    card_on_file,
    invoice_paid,
    invoice_prorated,
    paid_tier_without_trial,
    subscriber,
)
from tests.billing.stripe_cards import CHARGE_FAILS, MASTERCARD, VISA, card_confirmed
from tiers.models import Subscription
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


def _overview(team, **overrides) -> selectors.BillingOverview:
    values = dict(
        subscription=subscription_current(team=team),
        next_charge_at=None,
        next_charge_cents=None,
        currency="usd",
        pending_change="",
        card_brand="",
        card_last4="",
        invoices=list(Invoice.objects.filter(team=team)),
    )
    values.update(overrides)
    return selectors.BillingOverview(**values)


# --- Access ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/billing/", "/billing/checkout/pro/", "/billing/invoices/TL-0000001/"])
def test_billing_pages_need_login(client, catalog, path):
    response = client.get(path)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("path", ["/billing/cancel/", "/billing/resume/", "/billing/payment-method/"])
def test_billing_actions_are_post_only(alice, client, path):
    assert client.get(path).status_code == 405


def test_billing_forms_refuse_a_post_without_csrf_token(alice, team_tier, monkeypatch):
    called = []
    monkeypatch.setattr(checkout, "subscription_change", lambda **kw: called.append(kw))
    monkeypatch.setattr(checkout, "subscription_cancel", lambda **kw: called.append(kw))
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice.memberships.get().user)
    assert strict.post("/billing/checkout/team/", {"payment_method": "pm_card_visa"}).status_code == 403
    assert strict.post("/billing/cancel/").status_code == 403
    assert called == []


# --- /billing/ ------------------------------------------------------------------------------------------


def test_billing_page_shows_subscription_next_charge_pending_change_card_and_invoices(
    alice, client, catalog, monkeypatch
):
    pro = catalog["pro"]
    Subscription.objects.filter(team=alice).update(tier=pro, pending_tier=catalog["free"])
    invoice_paid(alice, number="TL-0000001", tier=pro)
    overview = _overview(
        alice,
        next_charge_at=FEB_1,
        next_charge_cents=20_000,
        pending_change="Moves to Free on Feb 1",
        card_brand="Visa",
        card_last4="4242",
    )
    monkeypatch.setattr(selectors, "billing_overview", lambda *, team, now=None: overview)

    response = client.get("/billing/")
    page = response.content.decode()
    assert response.status_code == 200
    assert 'data-tier="pro"' in page and "Active" in page
    assert "$200.00 on Feb 1, 2026" in page  # next charge: amount and date
    assert "Moves to Free on Feb 1" in page and 'action="/billing/resume/"' in page and "Undo" in page
    assert 'action="/billing/cancel/"' in page  # cancel, behind a confirmation panel
    assert "Visa" in page and "•••• 4242" in page
    assert 'href="/billing/invoices/TL-0000001/"' in page and "$200.00" in page
    # The "change card" form: Stripe.js's card Element, fed by a SetupIntent from /billing/setup-intent/.
    assert 'id="card-form"' in page and "data-card-form" in page and 'id="card-element"' in page
    assert 'data-setup-intent-url="/billing/setup-intent/"' in page and "billing/card-entry.js" in page
    assert page.count("csrfmiddlewaretoken") >= 4  # undo, cancel, card, log-out
    assert 'href="/billing/" aria-current="page"' in page  # the nav link


def test_billing_page_of_a_free_team_offers_no_cancel(alice, client, monkeypatch):
    monkeypatch.setattr(selectors, "billing_overview", lambda *, team, now=None: _overview(team))
    page = client.get("/billing/").content.decode()
    assert 'data-tier="free"' in page and "None scheduled" in page and "No card on file" in page
    assert 'action="/billing/cancel/"' not in page and "No invoices yet" in page


def test_cancel_and_undo_call_the_services_and_report_what_they_did(alice, client, catalog, monkeypatch):
    pro = catalog["pro"]
    Subscription.objects.filter(team=alice).update(tier=pro)
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
    monkeypatch.setattr(selectors, "billing_overview", lambda *, team, now=None: _overview(team))

    response = client.post("/billing/cancel/", follow=True)
    assert response.redirect_chain == [("/billing/", 302)]
    user = alice.memberships.get().user
    assert calls == [("cancel", {"team": alice, "actor": user})]
    assert "Your Pro subscription ends on" in response.content.decode()

    response = client.post("/billing/resume/", follow=True)
    assert calls[1] == ("resume", {"team": alice, "actor": user})
    assert "Done: you stay on Pro." in response.content.decode()


def test_cancel_refused_by_the_engine_is_shown_as_an_error(alice, client, monkeypatch):
    def cancel(**kwargs):
        raise services.BillingError("There is no paid tier to cancel.")

    monkeypatch.setattr(checkout, "subscription_cancel", cancel)
    monkeypatch.setattr(selectors, "billing_overview", lambda *, team, now=None: _overview(team))
    page = client.post("/billing/cancel/", follow=True).content.decode()
    assert "alert-error" in page and "There is no paid tier to cancel." in page


def test_change_card_declined_is_a_form_error(alice, client, monkeypatch):
    def update(**kwargs):
        raise PaymentDeclined("Your card was declined.")

    monkeypatch.setattr(customers, "payment_method_update", update)
    monkeypatch.setattr(selectors, "billing_overview", lambda *, team, now=None: _overview(team))
    response = client.post("/billing/payment-method/", {"payment_method": "pm_1", "setup_intent": "seti_1"})
    assert response.status_code == 400
    page = response.content.decode()
    assert "Your card was declined" in page and 'aria-invalid="true"' in page


def test_change_card_saves_through_the_service(alice, client, monkeypatch):
    calls = []

    def update(**kwargs):
        calls.append(kwargs)
        return BillingCustomer(team=alice, card_brand="mastercard", card_last4="4444")

    monkeypatch.setattr(customers, "payment_method_update", update)
    monkeypatch.setattr(selectors, "billing_overview", lambda *, team, now=None: _overview(team))
    response = client.post(
        "/billing/payment-method/", {"payment_method": "pm_1", "setup_intent": "seti_1"}, follow=True
    )
    user = alice.memberships.get().user
    assert calls == [{"team": alice, "payment_method": "pm_1", "setup_intent": "seti_1", "actor": user}]
    assert "Your card on file is now Mastercard •••• 4444." in response.content.decode()
    # Only a card confirmed with Stripe.js (a SetupIntent) is taken here: a bare payment method id is not.
    response = client.post("/billing/payment-method/", {"payment_method": "pm_card_visa"})
    assert response.status_code == 400 and len(calls) == 1
    assert "Enter your card" in response.context["card_form"].errors["payment_method"][0]


# --- Checkout -------------------------------------------------------------------------------------------


def test_checkout_offers_stripe_js_card_entry_and_explains_a_charge_now(alice, client, team_tier, settings):
    response = client.get("/billing/checkout/team/")
    page = response.content.decode()
    assert response.status_code == 200
    assert 'data-plan="subscribe"' in page and "pay <strong>$50.00</strong>" in page
    assert "csrfmiddlewaretoken" in page
    # Stripe.js (here localstripe's, from STRIPE_API_BASE) mounts its card Element; the page script is a file.
    assert f'<script src="{settings.STRIPE_API_BASE}/js.stripe.com/v3/"></script>' in page
    assert f'data-stripe-key="{settings.STRIPE_PUBLISHABLE_KEY}"' in page and 'id="card-element"' in page
    assert "4242 4242 4242 4242" in page and "4000 0027 6000 3184" in page  # the test cards to type
    assert 'name="card"' not in page  # no card on file: nothing to choose between
    assert "<script>" not in page  # no inline script


def test_checkout_explains_a_trial(alice, client):
    page = client.get("/billing/checkout/plus/").content.decode()
    assert 'data-plan="trial"' in page and "7-day free trial" in page and "nothing is charged today" in page


def test_checkout_during_a_trial_explains_the_switch_and_a_team_gets_one_trial_only(alice, client, catalog):
    trial_end = datetime(2026, 1, 8, tzinfo=UTC)
    Subscription.objects.filter(team=alice).update(tier=catalog["plus"], status="trialing", trial_end=trial_end)
    card_on_file(alice)
    page = client.get("/billing/checkout/pro/").content.decode()
    assert 'data-plan="trial_switch"' in page and "your trial goes on" in page and "Jan 8, 2026" in page
    # Back on free after the trial, Plus is charged at once: the trial was used.
    Subscription.objects.filter(team=alice).update(tier=catalog["free"], status="active")
    page = client.get("/billing/checkout/plus/").content.decode()
    assert 'data-plan="subscribe"' in page and "free trial" not in page


def test_checkout_defaults_to_the_card_on_file(alice, client, team_tier):
    card_on_file(alice, brand="mastercard", last4="4444")
    response = client.get("/billing/checkout/team/")
    field = response.context["form"]["card"]
    assert field.value() == "on_file"
    assert "Mastercard •••• 4444 (on file)" in response.content.decode()


def test_checkout_explains_upgrade_downgrade_and_current_tier(alice, client, catalog, team_tier):
    Subscription.objects.filter(team=alice).update(tier=team_tier)
    card_on_file(alice)
    upgrade = client.get("/billing/checkout/pro/").content.decode()
    assert 'data-plan="upgrade"' in upgrade and "prorated difference" in upgrade

    downgrade = client.get("/billing/checkout/free/")
    end = subscription_current(team=alice).current_period_end
    assert 'data-plan="downgrade"' in downgrade.content.decode()
    assert f"{end:%b} {end.day}, {end.year}" in downgrade.content.decode()
    assert not downgrade.context["form"].card_needed  # no card needed to move to Free
    assert 'id="card-element"' not in downgrade.content.decode() and "js.stripe.com" not in downgrade.content.decode()

    current = client.get("/billing/checkout/team/").content.decode()
    assert 'data-plan="current"' in current and "already on Team" in current and 'id="checkout-form"' not in current


def test_checkout_estimates_the_prorated_difference_of_an_upgrade(alice, client, catalog, team_tier):
    # Team ($50) to Pro ($200) half-way through a 31-day period: -$25.00 + $100.00.
    Subscription.objects.filter(team=alice).update(
        tier=team_tier, current_period_start=datetime(2026, 1, 1, tzinfo=UTC), current_period_end=FEB_1
    )
    with time_machine.travel(datetime(2026, 1, 16, 12, tzinfo=UTC), tick=False):
        response = client.get("/billing/checkout/pro/")
    assert response.context["plan"].estimate_cents == 7_500
    assert "about <strong>$75.00</strong>" in response.content.decode()


@pytest.mark.parametrize("slug", ["enterprise", "archived", "no-such-tier"])
def test_checkout_of_a_tier_that_cannot_be_chosen_is_not_found(alice, client, catalog, slug):
    archived = paid_tier_without_trial(slug="archived")
    archived.is_archived = True
    archived.save()
    assert client.get(f"/billing/checkout/{slug}/").status_code == 404


def test_checkout_success_calls_the_engine_once_and_reports_the_charge(alice, client, team_tier, monkeypatch):
    calls = []

    def change(**kwargs):
        calls.append(kwargs)
        Subscription.objects.filter(team=alice).update(tier=team_tier)
        invoice = invoice_paid(alice, number="TL-0000012", tier=team_tier)
        return services.CheckoutResult(
            subscription=subscription_current(team=alice),
            change="subscribed",
            invoice=invoice,
            payment=invoice.payments.get(),
        )

    monkeypatch.setattr(checkout, "subscription_change", change)
    monkeypatch.setattr(selectors, "billing_overview", lambda *, team, now=None: _overview(team))
    posted = {"payment_method": "pm_1", "setup_intent": "seti_1"}
    response = client.post("/billing/checkout/team/", posted, follow=True)
    assert response.redirect_chain == [("/billing/", 302)]
    user = alice.memberships.get().user
    assert calls == [{"team": alice, "tier": team_tier, **posted, "in_browser": True, "actor": user}]
    assert "You&#x27;re on Team. We charged $50.00 — invoice TL-0000012." in response.content.decode()


def test_checkout_with_the_card_on_file_passes_none(alice, client, team_tier, monkeypatch):
    card_on_file(alice)
    calls = []

    def change(**kwargs):
        calls.append(kwargs)
        raise PaymentDeclined("declined")

    monkeypatch.setattr(checkout, "subscription_change", change)
    client.post("/billing/checkout/team/", {"card": "on_file"})
    assert calls[0]["payment_method"] is None and calls[0]["setup_intent"] is None


def test_checkout_decline_is_a_form_error_and_changes_nothing(alice, client, team_tier, monkeypatch):
    def change(**kwargs):
        raise PaymentDeclined("Your card was declined.", extra={"decline_code": "generic_decline"})

    monkeypatch.setattr(checkout, "subscription_change", change)
    response = client.post("/billing/checkout/team/", {"payment_method": "pm_1", "setup_intent": "seti_1"})
    assert response.status_code == 400
    form = response.context["form"]
    assert form.errors["payment_method"] == [
        "Your card was declined. Nothing was charged and nothing changed: try another card."
    ]
    page = response.content.decode()
    assert "Your card was declined" in page and 'aria-invalid="true"' in page
    assert subscription_current(team=alice).tier.slug == "free"


def test_checkout_provider_down_and_invalid_change_are_form_errors(alice, client, team_tier, monkeypatch):
    from tiers.services import InvalidTierChange

    errors = iter([PaymentProviderUnavailable("timeout"), InvalidTierChange("You are already on this tier.")])

    def change(**kwargs):
        raise next(errors)

    monkeypatch.setattr(checkout, "subscription_change", change)
    first = client.post("/billing/checkout/team/", {"payment_method": "pm_1", "setup_intent": "seti_1"})
    assert first.status_code == 400
    assert "could not reach the payment provider" in first.context["form"].non_field_errors()[0]
    second = client.post("/billing/checkout/team/", {"payment_method": "pm_1", "setup_intent": "seti_1"})
    assert second.context["form"].non_field_errors() == ["You are already on this tier."]


def test_checkout_without_a_confirmed_card_is_refused_without_calling_the_engine(alice, client, team_tier, monkeypatch):
    monkeypatch.setattr(checkout, "subscription_change", lambda **kw: pytest.fail("engine called"))
    for posted in [{"payment_method": "pm_card_visa"}, {}, {"setup_intent": "seti_1"}]:
        response = client.post("/billing/checkout/team/", posted)
        assert response.status_code == 400
        assert response.context["form"].errors["payment_method"] == ["Enter your card's number, expiry date and CVC."]


# --- Invoice page --------------------------------------------------------------------------------------


def test_invoice_page_is_printable_with_lines_total_and_payments(alice, client, catalog, team_tier):
    invoice_paid(alice, number="TL-0000001", tier=team_tier)
    response = client.get("/billing/invoices/TL-0000001/")
    page = response.content.decode()
    assert response.status_code == 200
    assert 'Invoice <span class="invoice-number">TL-0000001</span>' in page
    assert "Team (Jan 1, 2026 to Feb 1, 2026)" in page and "Jan 1, 2026 \u2013 Feb 1, 2026" in page
    assert 'id="invoice-total">$50.00<' in page
    assert 'data-status="paid"' in page and 'data-payment-status="succeeded"' in page and "pi_test_TL-0000001" in page
    assert "window.print()" in page and "billing/billing.css" in page  # Print button and the print stylesheet


def test_invoice_page_shows_a_prorated_credit_and_charge(alice, client, catalog, team_tier):
    invoice_prorated(alice, number="TL-0000002", old=team_tier, new=catalog["pro"])
    page = client.get("/billing/invoices/TL-0000002/").content.decode()
    assert "Unused time on Team" in page and "-$25.00" in page
    assert "Remaining time on Pro" in page and "$100.00" in page
    assert 'id="invoice-total">$75.00<' in page and "No payment attempts yet." in page


def test_invoices_are_private_to_their_team(alice, client, catalog, team_tier):
    _, bob_team = subscriber("bob@example.com")
    invoice_paid(bob_team, number="TL-0000009", tier=team_tier)
    assert client.get("/billing/invoices/TL-0000009/").status_code == 404
    assert client.get("/billing/invoices/TL-9999999/").status_code == 404
    # Bob sees his own.
    bob = Client()
    bob.force_login(bob_team.memberships.get().user)
    assert bob.get("/billing/invoices/TL-0000009/").status_code == 200


# --- Flows through the real engine and localstripe ---------------------------------------------------


def test_checkout_flow_subscribe_decline_upgrade_downgrade_cancel_undo(alice, client, catalog, stripe_local):
    team_tier = paid_tier_without_trial()
    # A declined card: a form error, nothing changed, nothing charged.
    declined = client.post("/billing/checkout/team/", card_confirmed(alice, CHARGE_FAILS).post_data())
    assert declined.status_code == 400 and "Your card was declined" in declined.content.decode()
    assert subscription_current(team=alice).tier.slug == "free"
    assert not Payment.objects.filter(invoice__team=alice, status="succeeded").exists()

    # Subscribe with a good card: charged now, a paid invoice, linked from /billing/.
    response = client.post("/billing/checkout/team/", card_confirmed(alice, VISA).post_data(), follow=True)
    page = response.content.decode()
    invoice = Invoice.objects.get(team=alice, status="paid")
    assert subscription_current(team=alice).tier == team_tier
    assert f"We charged $50.00 — invoice {invoice.number}" in page
    assert f'href="/billing/invoices/{invoice.number}/"' in page and "•••• 4242" in page
    assert client.get(f"/billing/invoices/{invoice.number}/").status_code == 200

    # Upgrade: charged the prorated difference now, on a new invoice.
    response = client.post("/billing/checkout/pro/", {"card": "on_file"}, follow=True)
    assert subscription_current(team=alice).tier.slug == "pro"
    proration = Invoice.objects.get(team=alice, kind="proration")
    assert proration.status == "paid" and 0 < proration.total_cents <= 20_000 - 5_000  # at most a whole period
    assert proration.number in response.content.decode()

    # Downgrade: scheduled, shown as pending, undone.
    response = client.post("/billing/checkout/free/", {}, follow=True)
    assert response.redirect_chain == [("/billing/", 302)]
    assert subscription_current(team=alice).pending_tier.slug == "free"
    page = client.get("/billing/").content.decode()
    assert "Undo" in page
    client.post("/billing/resume/")
    assert subscription_current(team=alice).pending_tier is None

    # Cancel at period end, then undo.
    client.post("/billing/cancel/")
    assert subscription_current(team=alice).cancel_at_period_end
    client.post("/billing/resume/")
    assert not subscription_current(team=alice).cancel_at_period_end


def test_billing_page_with_the_real_overview(alice, client, catalog, stripe_local):
    paid_tier_without_trial()
    client.post("/billing/checkout/team/", card_confirmed(alice, VISA).post_data())
    page = client.get("/billing/").content.decode()
    end = subscription_current(team=alice).current_period_end
    assert 'data-tier="team"' in page and "•••• 4242" in page
    assert f"$50.00 on {end:%b} {end.day}, {end.year}" in page  # the next renewal
    invoice = Invoice.objects.get(team=alice)
    assert f'data-invoice="{invoice.number}"' in page

    # Change the card on file (an unconfirmed one first: a form error, the old card stays).
    unconfirmed = card_confirmed(alice, "4000002760003184", authenticate=None)
    response = client.post("/billing/payment-method/", unconfirmed.post_data())
    assert response.status_code == 400 and "authentication missing or failed" in response.content.decode()
    assert BillingCustomer.objects.get(team=alice).card_last4 == "4242"
    response = client.post("/billing/payment-method/", card_confirmed(alice, CHARGE_FAILS).post_data(), follow=True)
    assert "Your card on file is now" in response.content.decode() and "•••• 0341" in response.content.decode()


@pytest.mark.parametrize(
    ("number", "outcome", "last4"),
    [
        (VISA, "subscribed", "4242"),
        (MASTERCARD, "subscribed", "4444"),
        (CHARGE_FAILS, "declined", None),  # set up fine, then the charge fails: nothing changes
    ],
)
def test_test_cards_confirmed_with_stripe_js_do_what_stripe_says(
    alice, client, catalog, stripe_local, number, outcome, last4
):
    team_tier = paid_tier_without_trial()
    response = client.post("/billing/checkout/team/", card_confirmed(alice, number).post_data())
    if outcome == "subscribed":
        assert response.status_code == 302, response.context["form"].errors
        assert subscription_current(team=alice).tier == team_tier
        assert BillingCustomer.objects.get(team=alice).card_last4 == last4
        assert Invoice.objects.get(team=alice).status == "paid"
    else:
        assert response.status_code == 400
        assert "Your card was declined" in response.context["form"].errors["payment_method"][0]
        assert subscription_current(team=alice).tier.slug == "free"
        assert not Invoice.objects.filter(team=alice, status__in=["open", "paid"]).exists()
