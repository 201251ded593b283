"""An operator manages the tier catalog in the Django admin, in a real browser (admin JavaScript included:
the prepopulated slug, the filter_horizontal model picker, the changelist actions).

Every step is checked on the page and in the database; the pricing page shows what the admin did.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import assert_page_health, fill_fields, main_text, path_of

pytestmark = pytest.mark.e2e

OPERATOR_EMAIL = "ops@example.com"
OPERATOR_PASSWORD = "Operator-Console-5150"
SLUG = "team-starter"
ERRORS_SHOWN = re.compile(r"please correct the errors? below", re.I)


def _save(page) -> None:
    with page.expect_navigation():
        page.get_by_role("button", name="Save", exact=True).click()


def _tier_count() -> int:
    from tiers.models import Tier

    return Tier.objects.count()


def _pricing_card(page, slug: str):
    page.goto("/pricing/")
    return page.locator(f"[data-tier='{slug}']")


def test_operator_admin_tier_lifecycle(page, shot, seeded_catalog):
    from tiers import services as tier_services
    from tiers.models import Tier

    tier_services.operator_ensure(email=OPERATOR_EMAIL, password=OPERATOR_PASSWORD)
    seeded_before = {t.slug: (t.is_archived, t.requests_per_minute) for t in Tier.objects.all()}
    assert set(seeded_before) == {"free", "plus", "pro", "enterprise", "assistant"}

    # --- Log in: /admin/ sends the operator to the admin's login form.
    page.goto("/admin/")
    assert path_of(page.url) == "/admin/login/", page.url
    fill_fields(page, username=OPERATOR_EMAIL, password=OPERATOR_PASSWORD)
    shot("admin-login")
    with page.expect_navigation():
        page.get_by_role("button", name=re.compile(r"log in", re.I)).click()
    assert path_of(page.url) == "/admin/", page.url
    shot("admin-index")

    # --- Tiers changelist, then "Add tier".
    with page.expect_navigation():
        page.get_by_role("link", name="Tiers", exact=True).first.click()
    assert path_of(page.url) == "/admin/tiers/tier/"
    for name in ["Free", "Plus", "Pro", "Enterprise", "Assistant"]:
        expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
    with page.expect_navigation():
        page.get_by_role("link", name=re.compile(r"add tier", re.I)).click()
    assert path_of(page.url) == "/admin/tiers/tier/add/"

    # The admin's prepopulate script derives the slug from the name as it is typed.
    page.locator("[name='name']").press_sequentially("Team Starter")
    expect(page.locator("[name='slug']")).to_have_value(SLUG)

    # --- Invalid 1: a paid tier priced 0, and a negative rate limit.
    expect(page.locator("[name='is_paid']")).to_be_checked()  # tiers are paid unless unticked
    fill_fields(page, price_cents="0", requests_per_minute="-5")
    _save(page)
    assert path_of(page.url) == "/admin/tiers/tier/add/"
    expect(page.get_by_text(ERRORS_SHOWN)).to_be_visible()
    expect(page.get_by_text("A paid tier needs a price greater than zero.")).to_be_visible()
    expect(page.get_by_text("Ensure this value is greater than or equal to 0.")).to_be_visible()
    shot("add-invalid-price-and-limit")
    assert not Tier.objects.filter(slug=SLUG).exists()
    assert _tier_count() == len(seeded_before)

    # --- Invalid 2: billing overage with no overage price and no included tokens.
    fill_fields(page, price_cents="15.00", requests_per_minute="60")
    page.locator("[name='overage_policy']").select_option("bill")
    _save(page)
    assert path_of(page.url) == "/admin/tiers/tier/add/"
    expect(page.get_by_text(ERRORS_SHOWN)).to_be_visible()
    expect(page.get_by_text("A tier that bills overage needs an overage price.")).to_be_visible()
    expect(page.get_by_text("Overage is billed past the included tokens: set how many are included.")).to_be_visible()
    shot("add-invalid-overage")
    assert not Tier.objects.filter(slug=SLUG).exists()
    assert _tier_count() == len(seeded_before)

    # --- Valid: complete the limits and overage price, entitle two models through the picker.
    fill_fields(
        page,
        tokens_per_minute="50000",
        requests_per_day="2000",
        monthly_tokens="5000000",
        overage_cents_per_million_tokens="0.80",
    )
    page.locator("[name='billing_interval']").select_option("month")
    for model_id in ["Llama-3.3-8B-Instruct", "Llama-3.3-70B-Instruct"]:
        page.locator("#id_allowed_models_from").get_by_role("option", name=model_id, exact=True).dblclick()
        expect(page.locator("#id_allowed_models_to").get_by_role("option", name=model_id, exact=True)).to_have_count(1)
    shot("add-valid-filled")
    _save(page)
    assert path_of(page.url) == "/admin/tiers/tier/", page.url
    expect(page.get_by_text(re.compile(r"was added successfully", re.I))).to_be_visible()
    shot("added")

    tier = Tier.objects.get(slug=SLUG)
    assert _tier_count() == len(seeded_before) + 1
    assert (tier.name, tier.is_paid, tier.price_cents, tier.currency, tier.billing_interval) == (
        "Team Starter",
        True,
        1500,
        "usd",
        "month",
    )
    assert (tier.requests_per_minute, tier.tokens_per_minute, tier.requests_per_day, tier.monthly_tokens) == (
        60,
        50_000,
        2_000,
        5_000_000,
    )
    assert (tier.overage_policy, tier.overage_cents_per_million_tokens) == ("bill", 80)
    assert sorted(tier.allowed_models.values_list("model_id", flat=True)) == [
        "Llama-3.3-70B-Instruct",
        "Llama-3.3-8B-Instruct",
    ]
    assert tier.is_public and not tier.is_archived

    # The new public tier is on the pricing page at once.
    card = _pricing_card(page, SLUG)
    expect(card).to_have_count(1)
    expect(card).to_contain_text("Team Starter")
    expect(card).to_contain_text("$15.00")
    expect(card).to_contain_text("Llama-3.3-70B-Instruct")
    shot("pricing-with-new-tier")

    # --- Edit its limits: an invalid value first (nothing changes), then valid ones.
    page.goto("/admin/tiers/tier/")
    with page.expect_navigation():
        page.get_by_role("link", name="Team Starter", exact=True).click()
    assert path_of(page.url) == f"/admin/tiers/tier/{tier.pk}/change/"
    fill_fields(page, requests_per_minute="120", tokens_per_minute="-1")
    _save(page)
    expect(page.get_by_text(ERRORS_SHOWN)).to_be_visible()
    expect(page.get_by_text("Ensure this value is greater than or equal to 0.")).to_be_visible()
    shot("edit-invalid")
    tier.refresh_from_db()
    assert (tier.requests_per_minute, tier.tokens_per_minute) == (60, 50_000)

    fill_fields(page, requests_per_minute="120", tokens_per_minute="90000", monthly_tokens="8000000")
    _save(page)
    assert path_of(page.url) == "/admin/tiers/tier/", page.url
    expect(page.get_by_text(re.compile(r"was changed successfully", re.I))).to_be_visible()
    shot("edited")
    tier.refresh_from_db()
    assert (tier.requests_per_minute, tier.tokens_per_minute, tier.requests_per_day, tier.monthly_tokens) == (
        120,
        90_000,
        2_000,
        8_000_000,
    )
    assert tier.price_cents == 1500 and not tier.is_archived

    # --- Archive it with the changelist action.
    row_checkbox = page.locator(f"input[name='_selected_action'][value='{tier.pk}']")
    row_checkbox.check()
    page.locator("select[name='action']").select_option("archive_tiers")
    shot("archive-selected")
    with page.expect_navigation():
        page.get_by_role("button", name=re.compile(r"^go$", re.I)).click()
    expect(page.get_by_text(re.compile(r"Archived 1 tier"))).to_be_visible()
    shot("archived")

    tier.refresh_from_db()
    assert tier.is_archived
    assert tier.requests_per_minute == 120  # archiving changes nothing else
    assert {t.slug: (t.is_archived, t.requests_per_minute) for t in Tier.objects.exclude(pk=tier.pk)} == seeded_before

    # Archived: gone from the pricing page, the rest still there.
    expect(_pricing_card(page, SLUG)).to_have_count(0)
    assert "Team Starter" not in main_text(page)
    for slug in ["free", "plus", "pro"]:
        expect(page.locator(f"[data-tier='{slug}']")).to_have_count(1)
    shot("pricing-after-archive")

    assert_page_health(page)
