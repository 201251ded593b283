"""A person types Stripe's test cards into the checkout's Stripe.js card Element (localstripe's stand-in,
served by the real localstripe process behind ``stripe_local``) and sees what Stripe decided:
4242 4242 4242 4242 subscribes; 4000 0000 0000 0002 is declined in the page and nothing changes;
4000 0027 6000 3184 asks for 3-D Secure when it is saved and again at the charge (as it does on real
Stripe), and completing both subscribes while failing either changes nothing. Then a card change on
/billing/ the same way. Nothing is loaded from the internet.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.billing.billing_state import paid_tier_without_trial, subscriber
from tests.e2e.helpers import (
    CARD_3D_SECURE,
    CARD_DECLINED,
    CARD_VISA,
    assert_page_health,
    card_type,
    fill_fields,
    path_of,
    submit_form_with,
    three_d_secure_answer,
)
from tests.factories import PASSWORD

pytestmark = pytest.mark.e2e


@pytest.fixture
def signed_in(page, seeded_catalog, stripe_local, live_server):
    """A subscriber on the free tier, logged in; a Team tier that charges at once; every request the
    page makes outside the live server and localstripe is collected (there must be none)."""
    team_tier = paid_tier_without_trial(slug="team", price_cents=5_000)
    user, team = subscriber("ada@example.com")
    external: list[str] = []
    allowed = (live_server.url, stripe_local, "data:")
    page.on("request", lambda r: None if r.url.startswith(allowed) else external.append(r.url))
    page.goto("/accounts/login/")
    fill_fields(page, login=user.email, password=PASSWORD)
    submit_form_with(page, "login")
    return team, team_tier, external


def _open_checkout(page) -> None:
    page.goto("/billing/checkout/team/")
    expect(page.locator("#checkout-form [data-card-element]").get_by_label("Card number")).to_be_visible()


def _submit(page) -> None:
    page.locator("#checkout-submit").click()


def _card_error(page):
    return page.locator("#card-errors")


def test_visa_subscribes(page, shot, signed_in):
    from billing.models import BillingCustomer, Invoice
    from tiers.selectors import subscription_current

    team, team_tier, external = signed_in
    _open_checkout(page)
    card_type(page, CARD_VISA)
    shot("checkout-card-typed")
    _submit(page)
    page.wait_for_url("**/billing/")
    invoice = Invoice.objects.get(team=team)
    expect(page.locator(".messages")).to_contain_text(f"We charged $50.00 — invoice {invoice.number}")
    expect(page.locator("#card-on-file")).to_contain_text("4242")
    assert invoice.status == "paid" and subscription_current(team=team).tier == team_tier
    assert BillingCustomer.objects.get(team=team).card_last4 == "4242"
    assert external == []
    assert_page_health(page)


def test_declined_card_shows_why_and_changes_nothing(page, shot, signed_in):
    from billing.models import Invoice
    from tiers.selectors import subscription_current

    team, _, external = signed_in
    _open_checkout(page)
    card_type(page, CARD_DECLINED)
    _submit(page)
    expect(_card_error(page)).to_have_text("Your card was declined.")
    expect(page.locator("#card-entry")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#checkout-submit")).to_be_enabled()  # they can try another card
    shot("checkout-declined")
    assert path_of(page.url) == "/billing/checkout/team/"
    assert subscription_current(team=team).tier.slug == "free"
    assert not Invoice.objects.filter(team=team).exists()
    assert external == []
    assert_page_health(page)


def test_3d_secure_completed_at_set_up_and_charge_subscribes(page, shot, signed_in):
    from billing.models import Invoice
    from tiers.selectors import subscription_current

    team, team_tier, external = signed_in
    _open_checkout(page)
    card_type(page, CARD_3D_SECURE)
    _submit(page)
    shot("checkout-3ds-set-up")
    three_d_secure_answer(page, complete=True)  # saving the card
    # The charge asks again (on real Stripe too, for this card): the page says so and shows the dialog.
    expect(page.locator("#checkout-authentication")).to_contain_text("Your bank asks you to confirm this payment.")
    shot("checkout-3ds-charge")
    three_d_secure_answer(page, complete=True)
    page.wait_for_url("**/billing/")
    invoice = Invoice.objects.get(team=team)
    expect(page.locator(".messages")).to_contain_text(f"We charged $50.00 — invoice {invoice.number}")
    assert invoice.status == "paid" and subscription_current(team=team).tier == team_tier
    assert external == []
    assert_page_health(page)


def test_3d_secure_failed_at_set_up_shows_why_and_changes_nothing(page, shot, signed_in):
    from billing.models import BillingCustomer, Invoice
    from tiers.selectors import subscription_current

    team, _, external = signed_in
    _open_checkout(page)
    card_type(page, CARD_3D_SECURE)
    _submit(page)
    three_d_secure_answer(page, complete=False)
    expect(_card_error(page)).to_contain_text("authentication failed")
    shot("checkout-3ds-failed")
    assert path_of(page.url) == "/billing/checkout/team/"
    assert subscription_current(team=team).tier.slug == "free"
    assert not Invoice.objects.filter(team=team).exists()
    assert not BillingCustomer.objects.filter(team=team).exclude(default_payment_method_id="").exists()
    assert external == []
    assert_page_health(page)


def test_3d_secure_failed_at_the_charge_shows_why_and_changes_nothing(page, shot, signed_in):
    from billing.models import Invoice
    from tiers.selectors import subscription_current

    team, team_tier, external = signed_in
    _open_checkout(page)
    card_type(page, CARD_3D_SECURE)
    _submit(page)
    three_d_secure_answer(page, complete=True)
    expect(page.locator("#checkout-authentication")).to_be_visible()
    three_d_secure_answer(page, complete=False)
    expect(_card_error(page)).to_have_text(
        "The payment was not authenticated, so nothing was charged and nothing changed."
    )
    shot("checkout-3ds-charge-failed")
    assert path_of(page.url) == "/billing/checkout/team/"
    assert subscription_current(team=team).tier.slug == "free"
    assert Invoice.objects.get(team=team).status == "void"
    # Another card now: the page works again from the start.
    page.get_by_label("A new card").check()  # the 3-D Secure card was saved before the charge: on file now
    card_type(page, CARD_VISA)
    _submit(page)
    page.wait_for_url("**/billing/")
    assert subscription_current(team=team).tier == team_tier
    assert external == []
    assert_page_health(page)


def test_card_change_on_the_billing_page(page, shot, signed_in):
    from billing.models import BillingCustomer

    team, _, external = signed_in
    page.goto("/billing/")
    page.locator("#change-card summary").click()
    # Declined first: said in the form, nothing saved.
    card_type(page, CARD_DECLINED, form="#card-form")
    page.locator("#card-form").get_by_role("button", name="Save card").click()
    expect(page.locator("#card-form #card-errors")).to_have_text("Your card was declined.")
    assert not BillingCustomer.objects.filter(team=team).exclude(default_payment_method_id="").exists()
    # 3-D Secure completed: saved.
    card_type(page, CARD_3D_SECURE, form="#card-form")
    page.locator("#card-form").get_by_role("button", name="Save card").click()
    three_d_secure_answer(page, complete=True)
    page.wait_for_url("**/billing/")
    expect(page.locator(".messages")).to_contain_text("Your card on file is now")
    expect(page.locator("#card-on-file")).to_contain_text("3184")
    shot("billing-card-changed")
    assert BillingCustomer.objects.get(team=team).card_last4 == "3184"
    assert external == []
    assert_page_health(page)
