"""A subscriber pays in a real browser: signs up, subscribes to a paid tier with a Stripe test card typed
into Stripe.js (a declined card first), reads the paid invoice, upgrades and reads the prorated invoice.

The real billing engine and a real localstripe process (``stripe_local``) run behind the live server.
Each step is checked on the page and in the database.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import time_machine
from playwright.sync_api import expect

from tests.billing.billing_state import paid_tier_without_trial
from tests.e2e.helpers import (
    CARD_DECLINED,
    CARD_VISA,
    assert_page_health,
    card_type,
    fill_fields,
    link_in_email,
    main_text,
    path_of,
    submit_form_with,
)

pytestmark = pytest.mark.e2e

EMAIL = "grace.hopper@example.com"
PASSWORD = "Compiler-A0-1952-Cobol"


def _submit_checkout(page) -> None:
    with page.expect_navigation():
        page.locator("#checkout-submit").click()


def _money(cents: int) -> str:
    return f"${cents // 100:,}.{cents % 100:02d}" if cents >= 0 else f"-{_money(-cents)}"


def test_subscribe_pay_read_invoice_then_upgrade(page, shot, seeded_catalog, stripe_local, mailoutbox):
    from accounts.models import User
    from accounts.selectors import team_for_user
    from billing.models import Invoice, Payment
    from billing.proration import proration_compute
    from tiers.selectors import subscription_current

    # Plus and Pro start with a trial: a tier that charges at once shows the paid invoice.
    team_tier = paid_tier_without_trial(slug="team", price_cents=5_000)

    # --- Sign up and confirm the email address: a new user on the free tier.
    page.goto("/accounts/signup/")
    fill_fields(page, email=EMAIL, password1=PASSWORD, password2=PASSWORD)
    submit_form_with(page, "password1")
    page.goto(link_in_email(mailoutbox[0], r"/accounts/confirm-email/[^/]+/$"))
    with page.expect_navigation():
        page.get_by_role("button", name=re.compile(r"confirm", re.I)).click()
    team = team_for_user(user=User.objects.get(email=EMAIL))
    assert subscription_current(team=team).tier.slug == "free"

    # --- Pricing -> the Team tier's checkout: it says what will be charged, and asks for a card.
    page.goto("/pricing/")
    with page.expect_navigation():
        page.locator("[data-tier='team']").get_by_role("link", name="Choose this tier").click()
    assert path_of(page.url) == "/billing/checkout/team/", page.url
    expect(page.locator("#checkout-plan")).to_contain_text("$50.00")
    expect(page.locator("#checkout-form [data-card-element]").get_by_label("Card number")).to_be_visible()

    # --- A card declined at once (by Stripe.js, in the page): a form error, and nothing changed.
    card_type(page, CARD_DECLINED)
    page.locator("#checkout-submit").click()
    expect(page.locator("#checkout-form")).to_contain_text("Your card was declined")
    assert path_of(page.url) == "/billing/checkout/team/", page.url
    shot("checkout-declined")
    assert subscription_current(team=team).tier.slug == "free"
    assert not Payment.objects.filter(invoice__team=team, status="succeeded").exists()

    # --- Visa: subscribed, charged at once, the paid invoice on /billing/.
    card_type(page, CARD_VISA)
    _submit_checkout(page)
    assert path_of(page.url) == "/billing/", page.url
    invoice = Invoice.objects.get(team=team, status="paid")
    assert invoice.total_cents == 5_000
    assert subscription_current(team=team).tier == team_tier
    expect(page.locator(".messages")).to_contain_text(f"We charged $50.00 — invoice {invoice.number}")
    expect(page.locator("#subscription [data-tier='team']")).to_be_visible()
    expect(page.locator("#card-on-file")).to_contain_text("4242")
    row = page.locator(f"#invoice-table tr[data-invoice='{invoice.number}']")
    expect(row).to_contain_text("$50.00")
    expect(row).to_contain_text("Paid")
    shot("billing-subscribed")

    # --- The invoice page: lines, total, the payment; printable.
    with page.expect_navigation():
        row.get_by_role("link", name=invoice.number).click()
    assert path_of(page.url) == f"/billing/invoices/{invoice.number}/", page.url
    expect(page.locator("#invoice")).to_have_attribute("data-status", "paid")
    expect(page.locator("#invoice-total")).to_have_text("$50.00")
    expect(page.locator("#invoice-payments")).to_contain_text("Succeeded")
    expect(page.get_by_role("button", name="Print")).to_be_visible()
    shot("invoice-paid")
    page.emulate_media(media="print")
    expect(page.locator(".site-header")).to_be_hidden()
    expect(page.get_by_role("button", name="Print")).to_be_hidden()
    shot("invoice-paid-print")
    page.emulate_media(media="screen")

    # --- Ten days later, upgrade to Pro with the card on file: the prorated difference for the rest of
    # the period is charged now, on a new invoice (credit for the unused Team time, charge for Pro's).
    period = subscription_current(team=team)
    with time_machine.travel(period.current_period_start + timedelta(days=10), tick=True):
        page.goto("/pricing/")
        with page.expect_navigation():
            page.locator("[data-tier='pro']").get_by_role("link", name="Choose this tier").click()
        plan = page.locator("#checkout-plan")
        expect(plan).to_have_attribute("data-plan", "upgrade")
        expect(plan).to_contain_text("prorated difference")
        expect(page.locator("#due-today")).to_contain_text("About $")
        expect(page.locator("input[name='card'][value='on_file']")).to_be_checked()
        shot("checkout-upgrade")
        _submit_checkout(page)
        assert path_of(page.url) == "/billing/", page.url
        assert subscription_current(team=team).tier.slug == "pro"
        proration = Invoice.objects.get(team=team, kind=Invoice.Kind.PRORATION)
        expected = proration_compute(
            old_price_cents=5_000,
            new_price_cents=20_000,
            period_start=period.current_period_start,
            period_end=period.current_period_end,
            at=proration.issued_at,
        )
        # Exactly the engine's proration of the remaining ~2/3 of the period, to the cent.
        assert proration.status == "paid" and proration.total_cents == expected.total_cents
        assert 0 < proration.total_cents < 20_000 - 5_000
        assert sorted(line.amount_cents for line in proration.lines.all()) == [
            expected.credit_cents,
            expected.charge_cents,
        ]
        expect(page.locator(".messages")).to_contain_text(
            f"{_money(proration.total_cents)} — invoice {proration.number}"
        )
        expect(page.locator("#subscription [data-tier='pro']")).to_be_visible()
        shot("billing-upgraded")

        row = page.locator(f"#invoice-table tr[data-invoice='{proration.number}']")
        with page.expect_navigation():
            row.get_by_role("link", name=proration.number).click()
        lines = page.locator("#invoice-lines")
        expect(page.locator("#invoice-total")).to_have_text(_money(proration.total_cents))
        for line in proration.lines.all():
            expect(lines).to_contain_text(line.description)
            expect(lines).to_contain_text(_money(line.amount_cents))
        expect(page.locator("#invoice-payments")).to_contain_text(_money(proration.total_cents))
        expect(page.locator("#invoice-payments")).to_contain_text("Succeeded")
        assert "Tier change" in main_text(page)
        shot("invoice-proration")

    assert_page_health(page)
