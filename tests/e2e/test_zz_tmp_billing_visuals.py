"""TEMPORARY (not to be committed): screenshots of the billing pages with a faked engine."""
import pytest
from tests.tiers.billing_state import paid_tier_without_trial, invoice_paid, invoice_prorated, card_on_file, PASSWORD, FEB_1
pytestmark = pytest.mark.e2e

def test_visuals(page, shot, seeded_catalog, monkeypatch):
    from accounts.services import user_create
    from accounts.selectors import team_for_user
    from tiers import billing
    from tiers.models import Invoice, Subscription
    from tiers.selectors import subscription_current
    from tiers.stripe_gateway import PaymentDeclined
    team_tier = paid_tier_without_trial()
    user = user_create(email="grace@example.com", password=PASSWORD)
    team = team_for_user(user=user)

    def overview(*, team, now=None):
        sub = subscription_current(team=team)
        bc = getattr(team, "billing_customer", None) if hasattr(team, "billing_customer") else None
        from tiers.models import BillingCustomer
        bc = BillingCustomer.objects.filter(team=team).first()
        return billing.BillingOverview(subscription=sub, next_charge_at=FEB_1 if sub.tier.is_paid else None,
            next_charge_cents=sub.tier.price_cents if sub.tier.is_paid else None, currency="usd",
            pending_change="Moves to Free on Feb 1, 2026" if sub.pending_tier else "",
            card_brand=bc.card_brand if bc else "", card_last4=bc.card_last4 if bc else "",
            invoices=list(Invoice.objects.filter(team=team)))

    def change(*, team, tier, payment_method=None, actor=None, now=None):
        if payment_method == "pm_card_visa_chargeDeclined":
            raise PaymentDeclined("Your card was declined.")
        card_on_file(team)
        Subscription.objects.filter(team=team).update(tier=tier)
        inv = invoice_paid(team, number="TL-0000012", tier=tier)
        return billing.CheckoutResult(subscription=subscription_current(team=team), change="subscribed", invoice=inv, payment=inv.payments.get())
    monkeypatch.setattr(billing, "billing_overview", overview)
    monkeypatch.setattr(billing, "subscription_change", change)

    page.goto("/accounts/login/")
    page.fill("[name=login]", "grace@example.com"); page.fill("[name=password]", PASSWORD)
    with page.expect_navigation():
        page.locator("form:has([name=login]) button[type=submit]").first.click()
    page.goto("/billing/")
    shot("billing-free")
    page.goto("/billing/checkout/team/")
    shot("checkout")
    page.locator("input[value=pm_card_visa_chargeDeclined]").check()
    with page.expect_navigation():
        page.locator("#checkout-submit").click()
    shot("checkout-declined")
    page.locator("input[value=pm_card_visa]").check()
    with page.expect_navigation():
        page.locator("#checkout-submit").click()
    Subscription.objects.filter(team=team).update(pending_tier=seeded_catalog["free"])
    invoice_prorated(team, number="TL-0000013", old=team_tier, new=seeded_catalog["pro"])
    shot("billing-after")
    page.goto("/billing/")
    page.locator("#cancel-panel summary").click()
    page.locator("#change-card summary").click()
    shot("billing-expanded")
    page.goto("/billing/checkout/pro/")
    shot("checkout-upgrade")
    page.goto("/billing/checkout/free/")
    shot("checkout-downgrade")
    page.goto("/billing/invoices/TL-0000012/")
    shot("invoice")
    page.goto("/billing/invoices/TL-0000013/")
    shot("invoice-proration")
    page.emulate_media(media="print")
    shot("invoice-print")
    page.emulate_media(media="screen")
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto("/billing/")
    shot("billing-mobile")
    page.goto("/billing/checkout/pro/")
    shot("checkout-mobile")
    page.goto("/billing/invoices/TL-0000013/")
    shot("invoice-mobile")
    from tests.e2e.helpers import assert_page_health
    assert_page_health(page)
