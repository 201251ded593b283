"""Issue 16, findings 1-6 and 9, in a real browser: the figures a subscriber and an operator read.

1. During a trial /dashboard/ and /billing/ show the same period, the chart starts at sign-up, and the
   estimate shows no tier fee for the trial (nor after a cancel).
2. The estimate does not repeat a fee already paid: it is what the next invoice bills.
3. Switching tier during a trial says what happened (nothing charged), not "prorated".
4. The admin's refund message reports the amount refunded.
5. A Mastercard shows as Mastercard on /billing/, in the admin and in the audit log.
6. Operator analytics count every quota refusal at once, and say how current they are.
9. The spend-cap form's error is seen after submit (desktop and phone) and speaks in dollars; the
   admin takes tier prices in dollars.

The subscription setups go through the billing services (real localstripe behind them); what is
checked is what the pages show.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from playwright.sync_api import expect

from tests.e2e.helpers import assert_page_health, fill_fields, path_of, submit_form_with

pytestmark = pytest.mark.e2e

PASSWORD = "Figures-Right-2026-Dec"
OPERATOR_EMAIL = "ops@example.com"
OPERATOR_PASSWORD = "Operator-Console-5150"
SIGN_UP = datetime(2026, 12, 4, 9, 30, tzinfo=UTC)
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


def _user(email: str, tier_slug: str | None = None):
    from accounts.selectors import team_for_user
    from tiers import services as tier_services

    user = tier_services.user_create(email=email, password=PASSWORD, tier_slug=tier_slug)
    return user, team_for_user(user=user)


def _log_in(page, email: str) -> None:
    page.goto("/accounts/login/")
    fill_fields(page, login=email, password=PASSWORD)
    submit_form_with(page, "login")


def _operator_log_in(page) -> None:
    from tiers import services as tier_services

    tier_services.operator_ensure(email=OPERATOR_EMAIL, password=OPERATOR_PASSWORD)
    page.goto("/admin/login/")
    fill_fields(page, username=OPERATOR_EMAIL, password=OPERATOR_PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name=re.compile(r"log in", re.I)).click()
    assert path_of(page.url) == "/admin/", page.url


def _chart_labels(page) -> list[str]:
    labels = page.locator("#tokens-chart .chart-mark").evaluate_all("els => els.map(e => e.dataset.label)")
    return list(dict.fromkeys(labels))


# --- 1. A trial: one period on both pages, the chart from sign-up, no fee for the trial ----------------


def test_trial_period_chart_and_estimate(page, seeded_catalog, stripe_local, live_server, shot):
    from accounts.services import api_key_create
    from billing.checkout import subscription_cancel, subscription_change

    with time_machine.travel(SIGN_UP, tick=False):
        user, team = _user("trial@example.com")
        subscription_change(team=team, tier=seeded_catalog["plus"], payment_method="pm_card_visa", actor=user)
        _key, secret = api_key_create(team=team, name="app")
    # Some usage on the trial's second day, so the chart has bars.
    with time_machine.travel(SIGN_UP + timedelta(days=1), tick=True):
        assert _chat(live_server.url, secret) == 200

    # Two days into the 7-day Plus trial.
    with time_machine.travel(SIGN_UP + timedelta(days=2, hours=1), tick=True):
        _log_in(page, "trial@example.com")
        page.goto("/dashboard/")
        expect(page.locator("#period")).to_have_text("Dec 4, 2026 \N{EN DASH} Dec 11, 2026")
        # The chart of "this period" starts on the sign-up day, not weeks before it.
        assert _chart_labels(page)[0] == "Dec 4", _chart_labels(page)
        # This period is a free trial: no fee so far, nothing to pay for it.
        expect(page.locator("#bill-fee")).to_have_attribute("data-cents", "0")
        expect(page.locator("#bill-fee")).to_contain_text("trial")
        expect(page.locator("#bill-total")).to_contain_text("$0.00")
        # The next invoice is the first paid period's fee, when the trial ends: said as such.
        expect(page.locator("#next-invoice")).to_contain_text("Dec 11, 2026")
        expect(page.locator("#next-invoice-total")).to_contain_text("$20.00")
        shot("dashboard-trial")
        page.goto("/billing/")
        expect(page.locator("#billing-period")).to_have_text("Dec 4, 2026 \N{EN DASH} Dec 11, 2026")

        subscription_cancel(team=team, actor=user)
        page.goto("/dashboard/")
        expect(page.locator("#bill-total")).to_contain_text("$0.00")
        expect(page.locator("#next-invoice-total")).to_contain_text("$0.00")
        expect(page.locator("#next-invoice")).to_contain_text("ends on Dec 11, 2026")
        shot("dashboard-trial-cancelled")
    assert_page_health(page)


# --- 2. Paid $10, then $10 prorated: the estimate does not bill them again ----------------------------


def test_estimate_does_not_repeat_a_paid_fee(page, seeded_catalog, stripe_local, shot):
    from billing.checkout import subscription_change
    from billing.models import Invoice
    from tests.billing.billing_state import paid_tier_without_trial

    basic = paid_tier_without_trial(slug="basic", price_cents=1_000, sort_order=21)
    double = paid_tier_without_trial(slug="double", price_cents=3_000, sort_order=22)
    with time_machine.travel(SIGN_UP, tick=False):
        user, team = _user("paid@example.com")
        subscription_change(team=team, tier=basic, payment_method="pm_card_visa", actor=user)
    # Half-way through the period: the prorated difference for the other half, $10.
    with time_machine.travel(SIGN_UP + timedelta(days=15, hours=12), tick=False):
        subscription_change(team=team, tier=double, actor=user)
    paid = sorted(i.total_cents for i in Invoice.objects.filter(team=team, status="paid"))
    assert paid == [1_000, 1_000], paid

    with time_machine.travel(SIGN_UP + timedelta(days=16), tick=True):
        _log_in(page, "paid@example.com")
        page.goto("/dashboard/")
        # Both fees of this period are paid: nothing of them is billed again.
        expect(page.locator("#bill-fee")).to_have_attribute("data-cents", "0")
        expect(page.locator("#bill-fee")).to_contain_text("Paid")
        expect(page.locator("#bill-total")).to_contain_text("$0.00")
        # What the next invoice bills: the next period's fee, on the period end, as /billing/ says.
        expect(page.locator("#next-invoice")).to_contain_text("Jan 4, 2027")
        expect(page.locator("#next-invoice-total")).to_contain_text("$30.00")
        shot("dashboard-after-upgrade")
        page.goto("/billing/")
        expect(page.locator("#next-charge")).to_have_text("$30.00 on Jan 4, 2027")
    assert_page_health(page)


# --- 3. Switching tier during the trial: the message says nothing was charged --------------------------


def test_trial_switch_message_matches_what_happened(page, seeded_catalog, stripe_local, shot):
    from billing.checkout import subscription_change
    from billing.models import Payment

    with time_machine.travel(SIGN_UP, tick=False):
        user, team = _user("switch@example.com")
        subscription_change(team=team, tier=seeded_catalog["plus"], payment_method="pm_card_visa", actor=user)

    with time_machine.travel(SIGN_UP + timedelta(days=1), tick=True):
        _log_in(page, "switch@example.com")
        page.goto("/billing/checkout/pro/")
        expect(page.locator("#due-today")).to_have_text("$0.00")
        with page.expect_navigation():
            page.locator("#checkout-submit").click()
        assert path_of(page.url) == "/billing/", page.url
        message = page.locator(".messages")
        expect(message).to_contain_text("You're on Pro now")
        expect(message).to_contain_text("Nothing is charged until Dec 11, 2026")
        expect(message).to_contain_text("$200.00")
        expect(message).not_to_contain_text("prorated")
        shot("trial-switch-message")
    assert not Payment.objects.filter(invoice__team=team).exists()
    assert_page_health(page)


# --- 4. The admin's refund message reports the amount refunded ----------------------------------------


def test_admin_refund_message_reports_the_amount(page, seeded_catalog, stripe_local, shot):
    from billing.checkout import subscription_change
    from billing.models import Payment
    from tests.billing.billing_state import paid_tier_without_trial

    basic = paid_tier_without_trial(slug="basic", price_cents=1_000, sort_order=21)
    user, team = _user("refund@example.com")
    result = subscription_change(team=team, tier=basic, payment_method="pm_card_visa", actor=user)
    payment = Payment.objects.get(invoice=result.invoice)

    _operator_log_in(page)
    page.goto("/admin/billing/payment/")
    page.locator(f"input[name='_selected_action'][value='{payment.pk}']").check()
    page.locator("select[name='action']").select_option("refund_payments")
    with page.expect_navigation():
        page.locator("button[name='index'], input[name='index']").first.click()
    with page.expect_navigation():
        page.locator("[name='apply']").click()
    messages = page.locator(".messagelist")
    expect(messages).to_contain_text(f"Refunded 1: {result.invoice.number} ($10.00)")
    shot("admin-refund-message")
    payment.refresh_from_db()
    assert payment.amount_refunded_cents == 1_000
    assert_page_health(page)


# --- 5. A Mastercard is a Mastercard everywhere -----------------------------------------------------------


def test_mastercard_shows_as_mastercard(page, seeded_catalog, stripe_local, shot):
    from billing.customers import payment_method_update

    user, team = _user("mc@example.com")
    payment_method_update(team=team, payment_method="pm_card_mastercard", actor=user)

    _log_in(page, "mc@example.com")
    page.goto("/billing/")
    expect(page.locator("#card-on-file")).to_contain_text("Mastercard •••• 4444")
    shot("billing-mastercard")

    page.goto("/accounts/logout/")
    page.context.clear_cookies()
    _operator_log_in(page)
    page.goto("/admin/billing/billingcustomer/")
    expect(page.locator("#result_list")).to_contain_text("Mastercard •••• 4444")
    expect(page.locator("#result_list")).not_to_contain_text("Visa")
    page.goto(f"/admin/accounts/auditentry/?team__id__exact={team.pk}")
    expect(page.locator("#result_list")).to_contain_text("Mastercard ending in 4444")
    expect(page.locator("#result_list")).not_to_contain_text("Visa")
    shot("admin-audit-mastercard")
    assert_page_health(page)


# --- 6. Every refusal is on the operator's page at once, and the page says how current it is ------------


def _chat(base_url: str, secret: str) -> int:
    body = json.dumps({"model": "Llama-3.3-8B-Instruct", "messages": [{"role": "user", "content": "hi"}]})
    request = urllib.request.Request(  # noqa: S310 - the live server on loopback
        f"{base_url}/v1/chat/completions",
        data=body.encode(),
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_analytics_count_every_refusal_at_once(page, seeded_catalog, live_server, shot):
    from accounts.services import api_key_create

    # From the start of a minute, so the 22 requests share one per-minute window whatever the machine's speed.
    with time_machine.travel(SIGN_UP.replace(minute=0, second=0), tick=True):
        _user_obj, team = _user("busy@example.com")
        _key, secret = api_key_create(team=team, name="load")
        statuses = [_chat(live_server.url, secret) for _ in range(22)]
        refused = statuses.count(429)
        assert refused == 12 and statuses.count(200) == 10, statuses  # the free tier admits 10 a minute

        _operator_log_in(page)
        page.goto("/admin/analytics/")
        expect(page.locator("#refusals-table [data-tier='free'] td").last).to_have_text("12")
        expect(page.locator("#refusals-freshness")).to_contain_text("as they happen")
        shot("analytics-refusals")
    assert_page_health(page)


# --- 9. The spend-cap error is seen, in dollars; the admin takes prices in dollars ---------------------


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_spend_cap_error_is_visible_and_in_dollars(page, seeded_catalog, viewport, shot):
    _user("cap@example.com", tier_slug="pro")
    page.set_viewport_size(viewport)
    _log_in(page, "cap@example.com")
    page.goto("/dashboard/")
    page.locator("#spend-cap-form [name='amount']").fill("5")
    with page.expect_navigation():
        page.locator("#spend-cap-save").click()
    error = page.locator("#amount-errors")
    expect(error).to_contain_text("at least the tier fee ($200.00)")
    expect(error).not_to_contain_text("cents")
    # Seen without scrolling: inside the viewport after the page loads, and the field has the focus.
    expect(error).to_be_in_viewport()
    expect(page.locator("#spend-cap-form [name='amount']")).to_be_focused()
    shot(f"spend-cap-error-{viewport['width']}")
    assert_page_health(page)


def test_admin_tier_prices_in_dollars(page, seeded_catalog, shot):
    from tiers.models import Tier

    pro = seeded_catalog["pro"]
    _operator_log_in(page)
    page.goto(f"/admin/tiers/tier/{pro.pk}/change/")
    price = page.locator("[name='price_cents']")
    overage = page.locator("[name='overage_cents_per_million_tokens']")
    expect(price).to_have_value("200.00")
    expect(overage).to_have_value("0.60")
    shot("admin-tier-prices-dollars")
    price.fill("249.99")
    overage.fill("0.75")
    with page.expect_navigation():
        page.get_by_role("button", name="Save", exact=True).click()
    assert path_of(page.url) == "/admin/tiers/tier/", page.url
    pro = Tier.objects.get(pk=pro.pk)
    assert (pro.price_cents, pro.overage_cents_per_million_tokens) == (24_999, 75)

    # A third decimal is refused with a message, nothing saved.
    page.goto(f"/admin/tiers/tier/{pro.pk}/change/")
    page.locator("[name='price_cents']").fill("12.345")
    with page.expect_navigation():
        page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".errorlist")).to_contain_text("2 decimal places")
    assert Tier.objects.get(pk=pro.pk).price_cents == 24_999
    assert_page_health(page)
