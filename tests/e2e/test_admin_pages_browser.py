"""Issue 16's admin findings (12): audit entries read as labels and readable times, the tier and audit
changelists fit a 1280 px screen without a horizontal scroll, and no two admin sections share a title.

axe-core audits every admin page opened here too (the ``page`` fixture): 0 serious, 0 critical.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.helpers import assert_page_health, fill_fields, path_of

pytestmark = pytest.mark.e2e

OPERATOR_EMAIL = "ops-pages@example.com"
OPERATOR_PASSWORD = "Operator-Pages-5150"


def _operator_logs_in(page) -> None:
    from tiers import services as tier_services

    tier_services.operator_ensure(email=OPERATOR_EMAIL, password=OPERATOR_PASSWORD)
    page.goto("/admin/")
    fill_fields(page, username=OPERATOR_EMAIL, password=OPERATOR_PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name=re.compile(r"log in", re.I)).click()
    assert path_of(page.url) == "/admin/", page.url


def _no_horizontal_scroll(page) -> None:
    overflow = page.locator("#changelist .results").evaluate("el => [el.scrollWidth, el.clientWidth]")
    assert overflow[0] <= overflow[1] + 1, f"the list scrolls sideways: {overflow}"
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1")


def test_admin_sections_audit_entries_and_lists_read_well_at_1280(page, shot, seeded_catalog):
    from accounts.models import AuditEntry
    from accounts.selectors import team_for_user
    from tiers import services as tier_services
    from tiers.models import Subscription

    customer = tier_services.user_create(email="customer.with.a.long.name@example.com", password="x-Pass-12345")
    team = team_for_user(user=customer)
    subscription = Subscription.objects.get(team=team)
    AuditEntry.objects.create(
        team=team,
        action=AuditEntry.Action.SPEND_CAP_SET,
        description="Spend cap set to $250.00 (hard): requests past it are refused until the period ends.",
        data={"amount_cents": 25_000},
        created_at=subscription.current_period_start,
    )
    _operator_logs_in(page)

    # --- Section titles on the index are distinct.
    captions = page.locator("#content-main .module caption, #content-main .module h2").all_inner_texts()
    captions = [c.strip().upper() for c in captions if c.strip()]
    assert len(captions) == len(set(captions)), captions
    shot("admin-index")

    # --- The subscription's audit trail speaks in labels and readable times.
    page.goto(f"/admin/tiers/subscription/{subscription.pk}/change/")
    trail = page.locator(".field-audit_trail")
    expect(trail).to_contain_text("Spend cap set ·")
    text = trail.inner_text()
    assert "spend_cap_set" not in text, text
    assert not re.search(r"\d{4}-\d{2}-\d{2}", text), text
    start = subscription.current_period_start
    expect(trail).to_contain_text(f"{start:%b} {start.day}, {start:%Y}")

    # --- The audit list and the tier list fit 1280 px.
    page.goto("/admin/accounts/auditentry/")
    expect(page.locator("#result_list")).to_contain_text("Spend cap set")
    _no_horizontal_scroll(page)
    shot("admin-audit-list")
    page.goto("/admin/tiers/tier/")
    expect(page.locator("#result_list")).to_contain_text("Pro")
    _no_horizontal_scroll(page)
    shot("admin-tier-list")
    assert_page_health(page)
