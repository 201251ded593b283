"""Teams in a real browser (issue 14): an owner invites a colleague, who signs up from the emailed link,
lands in the team as a member, creates an API key, switches between their teams and uses the
playground in the owner's team (the usage lands on the current team), and is refused billing; the
owner makes them a billing member and billing opens for them.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import STEP_TIMEOUT_MS
from tests.e2e.helpers import assert_page_health, fill_fields, link_in_email, main_text, path_of, submit_form_with

pytestmark = pytest.mark.e2e

OWNER = "grace@example.com"
COLLEAGUE = "katherine@example.com"
PASSWORD = "Compiler-A0-1952-nanos"


def test_owner_invites_a_colleague_who_joins_and_is_promoted_to_billing(
    page, browser, live_server, shot, results_dir, seeded_catalog, mailoutbox, settings
):
    from accounts.models import ApiKey, Membership, Team
    from accounts.selectors import team_for_user
    from tiers import services as tier_services
    from usage.models import Conversation, UsageRecord

    settings.TIERLAB_SITE_URL = live_server.url
    owner = tier_services.user_create(email=OWNER, password=PASSWORD)
    team = team_for_user(user=owner)

    # --- The owner signs in and opens the team page from the navigation bar.
    page.goto("/accounts/login/")
    fill_fields(page, login=OWNER, password=PASSWORD)
    submit_form_with(page, "login")
    with page.expect_navigation():
        page.locator("#nav-team").click()
    assert path_of(page.url) == f"/teams/{team.slug}/members/"
    expect(page.locator("#my-role")).to_have_text("owner")

    # --- Invite the colleague as a member.
    page.locator("#invite-form [name='email']").fill(COLLEAGUE)
    page.locator("#invite-form [name='role']").select_option("member")
    submit_form_with(page, "email")
    expect(page.locator(f"#invitation-table tr[data-email='{COLLEAGUE}']")).to_contain_text("Pending")
    shot("owner-invited")
    assert len(mailoutbox) == 1 and mailoutbox[0].to == [COLLEAGUE]
    assert live_server.url + "/invitations/" in mailoutbox[0].body  # an absolute link
    link = link_in_email(mailoutbox[0], r"^/invitations/[^/]+/$")

    # --- The colleague, in a browser of their own, signs up from the link.
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(STEP_TIMEOUT_MS)
    colleague_page = context.new_page()
    try:
        colleague_page.goto(link)
        expect(colleague_page.locator("#invitation-summary")).to_contain_text(COLLEAGUE)
        with colleague_page.expect_navigation():
            colleague_page.locator("#invitation-signup").click()
        assert path_of(colleague_page.url) == "/accounts/signup/"
        expect(colleague_page.locator("[name='email']")).to_have_value(COLLEAGUE)
        fill_fields(colleague_page, password1=PASSWORD, password2=PASSWORD)
        submit_form_with(colleague_page, "password1")
        # No confirmation email needed: the link came to that mailbox. Back on the invitation, signed in.
        assert path_of(colleague_page.url) == link, colleague_page.url
        assert len(mailoutbox) == 1
        with colleague_page.expect_navigation():
            colleague_page.locator("#accept-invitation").click()
        assert path_of(colleague_page.url) == "/dashboard/"
        expect(colleague_page.locator("#team-switch-select")).to_have_value(team.slug)
        expect(colleague_page.locator("main")).to_contain_text(team.name)
        assert Membership.objects.get(team=team, user__email=COLLEAGUE).role == "member"
        expect(colleague_page.locator("header").get_by_role("link", name="Billing")).to_have_count(0)
        colleague_page.screenshot(path=str(results_dir / "colleague-1-joined.png"), full_page=True)

        # --- A member creates an API key in the team...
        colleague_page.goto("/keys/")
        fill_fields(colleague_page, name="katherine laptop")
        submit_form_with(colleague_page, "name")
        expect(colleague_page.locator("#new-key-secret")).to_contain_text("tl-")
        key = ApiKey.objects.get(name="katherine laptop")
        assert key.team == team and key.created_by.email == COLLEAGUE
        # --- They switch to their own team and back from the playground, and chat there: the usage
        # lands on the current team (the owner's), without a key.
        personal = Team.objects.filter(is_personal=True, memberships__user__email=COLLEAGUE).exclude(pk=team.pk).get()
        with colleague_page.expect_navigation():
            colleague_page.locator("#team-switch-select").select_option(personal.slug)
        expect(colleague_page.locator("#team-switch-select")).to_have_value(personal.slug)
        with colleague_page.expect_navigation():
            colleague_page.locator("#nav-playground").click()
        expect(colleague_page.locator("main")).to_contain_text(personal.name)
        with colleague_page.expect_navigation():
            colleague_page.locator("#team-switch-select").select_option(team.slug)
        assert path_of(colleague_page.url) == "/playground/"  # switching keeps the page
        expect(colleague_page.locator("main")).to_contain_text(team.name)
        colleague_page.locator("#chat-message").fill("What should our team try first?")
        colleague_page.locator("#chat-send").click()
        expect(colleague_page.locator("#usage-panel")).to_be_visible()
        assert colleague_page.locator("#chat-log .chat-assistant .chat-text").inner_text()
        record = UsageRecord.objects.get()
        assert record.team_id == team.pk and record.api_key_id is None
        assert Conversation.objects.get().team_id == team.pk
        colleague_page.screenshot(path=str(results_dir / "colleague-playground.png"), full_page=True)

        # ...and cannot open billing.
        response = colleague_page.goto("/billing/")
        assert response.status == 403
        expect(colleague_page.locator("#forbidden-message")).to_contain_text("billing")

        # --- The owner makes them a billing member.
        page.reload()
        row = page.locator(f"#member-table tr[data-email='{COLLEAGUE}']")
        row.locator("select[name='role']").select_option("billing")
        with page.expect_navigation():
            row.get_by_role("button", name=re.compile("Save")).click()
        expect(page.locator(f"#member-table tr[data-email='{COLLEAGUE}'] select[name='role']")).to_have_value("billing")
        shot("owner-promoted")

        # --- Billing opens for them, and the navigation bar shows it.
        response = colleague_page.goto("/billing/")
        assert response.status == 200
        expect(colleague_page.locator("header").get_by_role("link", name="Billing")).to_have_count(1)
        assert "Not allowed" not in main_text(colleague_page)
        colleague_page.screenshot(path=str(results_dir / "colleague-2-billing.png"), full_page=True)
    finally:
        context.close()
    assert_page_health(page)
