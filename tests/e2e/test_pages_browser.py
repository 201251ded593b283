"""Issue 16's page findings 8, 10, 11 and 12 (the subscriber's side), each checked in a real browser at
the widths it is about: desktop (1280 px) and phone (390 px).

Every page these tests open is also audited by axe-core (tests/e2e/axe_check.py, through the ``page``
fixture): no serious or critical violation.
"""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from playwright.sync_api import expect

from tests.e2e.helpers import assert_page_health, fill_fields, path_of, submit_form_with

pytestmark = pytest.mark.e2e

PASSWORD = "pages-browser-pass-1"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
WIDTHS = pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])


def _subscriber(email: str, tier_slug: str | None = None):
    from accounts.selectors import team_for_user
    from tiers import services as tier_services

    user = tier_services.user_create(email=email, password=PASSWORD, tier_slug=tier_slug)
    return user, team_for_user(user=user)


def _log_in(page, email: str, *, next_path: str = "/dashboard/", password: str = PASSWORD) -> None:
    page.goto(f"/accounts/login/?next={next_path}")
    fill_fields(page, login=email, password=password)
    submit_form_with(page, "login")
    if path_of(page.url) != next_path:
        page.goto(next_path)
    assert path_of(page.url) == next_path, page.url


def _horizontally_hidden(locator) -> list[str]:
    """Ancestors of the element that scroll sideways and hide part of it (a "scroll box")."""
    return locator.evaluate(
        """el => {
            const box = el.getBoundingClientRect();
            const hidden = [];
            for (let a = el.parentElement; a; a = a.parentElement) {
                const style = getComputedStyle(a);
                if (a.scrollWidth > a.clientWidth + 1 && /(auto|scroll|hidden)/.test(style.overflowX)) {
                    const frame = a.getBoundingClientRect();
                    if (box.right > frame.right + 1 || box.left < frame.left - 1) hidden.push(a.tagName + '#' + a.id);
                }
            }
            if (box.right > document.documentElement.clientWidth + 1) hidden.push('viewport');
            return hidden;
        }"""
    )


# --- Finding 8: charts drawn for the width they get; a year is not half a megabyte ----------------------


@WIDTHS
def test_dashboard_charts_read_at_any_width(page, shot, seeded_catalog, viewport):
    from tests.usage.test_dashboard import NOW, build_history
    from tests.usage.test_dashboard import PASSWORD as HISTORY_PASSWORD

    page.set_viewport_size(viewport)
    with time_machine.travel(NOW, tick=True):
        user, _, _ = build_history(seeded_catalog)
        _log_in(page, user.email, password=HISTORY_PASSWORD)
        svg = page.locator("#tokens-chart svg")
        expect(svg).to_be_visible()
        box = svg.bounding_box()
        # The plot uses the width it has (a phone's card is ~300 px wide) ...
        assert box["width"] > viewport["width"] * 0.6, box
        # ... and its text is drawn at a readable size: 11 px or more on screen, not scaled down with it.
        for selector in ("#tokens-chart .chart-tick", "#tokens-chart .chart-xlabel", "#requests-chart .chart-tick"):
            heights = page.locator(selector).evaluate_all(
                "els => els.filter(e => e.getClientRects().length).map(e => e.getBoundingClientRect().height)"
            )
            assert heights, selector
            assert min(heights) >= 11, (selector, heights)
        # The x labels shown do not overlap each other.
        spans = page.locator("#tokens-chart .chart-xlabel").evaluate_all(
            "els => els.filter(e => e.getClientRects().length).map(e => [e.getBoundingClientRect().left,"
            " e.getBoundingClientRect().right])"
        )
        assert len(spans) >= 3, spans
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans
        page.evaluate("window.scrollTo(0, 0)")
        shot(f"dashboard-{viewport['width']}")

        # A year of days: the page stays small (it was ~490 KB of SVG).
        response = page.request.get("/dashboard/?range=365d")
        assert response.ok
        size = len(response.body())
        assert size < 250_000, size
    assert_page_health(page)


@WIDTHS
def test_invoice_amounts_and_team_name_fit_at_any_width(page, shot, seeded_catalog, viewport):
    from tests.factories import InvoiceFactory

    email = "alex.morgan@example.com"
    _, team = _subscriber(email, tier_slug="pro")
    invoice = InvoiceFactory(subscription=team.subscriptions.get(), paid=True)
    page.set_viewport_size(viewport)
    _log_in(page, email, next_path="/billing/")

    total = page.locator(f"#invoice-table tr[data-invoice='{invoice.number}'] td.num")
    expect(total).to_be_visible()
    assert _horizontally_hidden(total) == []

    page.goto(f"/billing/invoices/{invoice.number}/")
    for selector in ("#invoice-total", "#invoice-lines tbody tr td.num >> nth=-1", "#invoice-payments td.num"):
        cell = page.locator(selector)
        expect(cell).to_be_visible()
        assert _horizontally_hidden(cell) == [], selector
    # The team ("<email>'s team") never breaks inside the address: the address is on one line.
    lines = page.locator("#invoice .invoice-meta dd").first.evaluate(
        """(dd, email) => {
            const text = dd.firstChild; const at = text.data.indexOf(email);
            const range = document.createRange(); range.setStart(text, at); range.setEnd(text, at + email.length);
            return new Set([...range.getClientRects()].map(r => Math.round(r.top))).size;
        }""",
        email,
    )
    assert lines == 1
    shot(f"invoice-{viewport['width']}")
    assert_page_health(page)


# --- Finding 10: the pricing page -------------------------------------------------------------------------


@WIDTHS
def test_pricing_marks_the_current_tier_links_contact_and_fits_four_tiers(page, shot, seeded_catalog, viewport):
    from django.conf import settings

    from tests.factories import TierFactory
    from tiers.models import Tier

    # Four public developer tiers, the fourth priced in four digits (the consumer Assistant tier aside).
    Tier.objects.filter(slug="assistant").update(is_public=False)
    TierFactory(slug="team", name="Team", price_cents=100_000, is_public=True, sort_order=25)
    email = "pricing@example.com"
    _subscriber(email, tier_slug="plus")
    page.set_viewport_size(viewport)
    _log_in(page, email, next_path="/pricing/")

    cards = page.locator("[data-tier]")
    assert cards.count() >= 4
    current = page.locator("[data-tier='plus']")
    expect(current).to_have_attribute("data-current", "true")
    expect(current).to_contain_text("Your current tier")
    assert page.locator("[data-current]").count() == 1

    contact = page.locator("#contact-link")
    expect(contact).to_have_attribute("href", re.compile(rf"^mailto:{re.escape(settings.TIERLAB_SUPPORT_EMAIL)}"))

    # "/ month" stays on the line of its amount, and the buttons of the cards in one row line up.
    for i in range(cards.count()):
        card = cards.nth(i)
        amount, per = card.locator(".tier-price .amount"), card.locator(".tier-price .per")
        if per.count():
            a, p = amount.bounding_box(), per.bounding_box()
            assert p["y"] < a["y"] + a["height"] and p["x"] >= a["x"] + a["width"] - 1, (i, a, p)
    rows: dict[int, list[float]] = {}
    for i in range(cards.count()):
        card_top = round(cards.nth(i).bounding_box()["y"])
        rows.setdefault(card_top, []).append(cards.nth(i).locator(".tier-cta .btn").bounding_box()["y"])
    for tops in rows.values():
        assert max(tops) - min(tops) < 2, rows
    if viewport is DESKTOP:
        assert len(rows) == 1, f"four tiers in one row at 1280 px: {rows}"
    shot(f"pricing-{viewport['width']}")
    assert_page_health(page)


# --- Finding 11: a status page for people -----------------------------------------------------------------


def test_footer_status_link_opens_a_status_page_and_healthz_stays_json(page, shot, seeded_catalog):
    page.goto("/pricing/")
    with page.expect_navigation():
        page.locator("footer").get_by_role("link", name="System status").click()
    assert path_of(page.url) == "/status/", page.url
    expect(page.get_by_role("heading", level=1)).to_have_text("System status")
    expect(page.locator("#status-summary")).to_have_attribute("data-status", "ok")
    expect(page.locator("#status-summary")).to_contain_text("All systems are working")
    parts = page.locator("#status-parts tbody tr")
    keys = parts.evaluate_all("rows => rows.map(r => r.dataset.part)")
    assert {"database", "cache", "broker", "scheduler", "stripe"} <= set(keys), keys
    expect(page.locator("#status-parts tr[data-part='database']")).to_contain_text("Working")
    shot("status")
    # The machines' endpoint is unchanged: JSON, with the same checks the page names.
    health = page.request.get("/healthz")
    assert health.headers["content-type"].startswith("application/json")
    assert set(health.json()["checks"]) <= set(keys)
    assert_page_health(page)


# --- Finding 12: the subscriber's rough edges --------------------------------------------------------------


def test_new_user_dashboard_prompts_for_a_key_instead_of_empty_charts(page, shot, seeded_catalog):
    email = "brand-new@example.com"
    _subscriber(email)
    _log_in(page, email)
    empty = page.locator("#usage-empty")
    expect(empty).to_be_visible()
    expect(page.locator("#tokens-chart")).to_have_count(0)
    expect(page.locator("#requests-chart")).to_have_count(0)
    link = empty.get_by_role("link", name="Create an API key")
    with page.expect_navigation():
        link.click()
    assert path_of(page.url) == "/keys/"
    shot("keys-empty")
    assert_page_health(page)


def test_one_hour_of_usage_draws_an_ordinary_bar(page, seeded_catalog):
    from tests.factories import UsageRecordFactory

    email = "one-hour@example.com"
    _, team = _subscriber(email)
    UsageRecordFactory(team=team, model="Llama-3.3-8B-Instruct", prompt_tokens=10, completion_tokens=20)
    # "This period" began when the subscriber signed up, moments ago: one hourly bar.
    _log_in(page, email)
    bars = page.locator("#tokens-chart rect.chart-mark:not([data-value='0'])")
    expect(bars).to_have_count(1)
    bar = bars.first.bounding_box()
    plot = page.locator("#tokens-chart svg").bounding_box()
    assert bar["width"] < plot["width"] / 8, (bar, plot)
    assert_page_health(page)


def test_key_secret_copies_and_revoking_asks_first(page, shot, seeded_catalog):
    from accounts.models import ApiKey

    email = "keys@example.com"
    _, team = _subscriber(email)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    _log_in(page, email, next_path="/keys/")
    page.locator("#create-key-form [name='name']").fill("laptop")
    with page.expect_navigation():
        page.locator("#create-key-form button[type=submit]").click()
    secret = page.locator("#new-key-secret").inner_text().strip()
    copy = page.locator("#copy-secret")
    expect(copy).to_have_text("Copy key")
    expect(copy).to_be_visible()
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    shot("key-created")

    key = ApiKey.objects.get(team=team, name="laptop")
    # Revoke leads to a confirmation page (a plain link and form: no script needed); nothing happens yet.
    with page.expect_navigation():
        page.get_by_role("link", name="Revoke laptop").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Revoke “laptop”?")
    key.refresh_from_db()
    assert key.revoked_at is None
    shot("key-revoke-confirm")
    with page.expect_navigation():
        page.get_by_role("link", name="Keep it").click()
    assert path_of(page.url) == "/keys/"
    key.refresh_from_db()
    assert key.revoked_at is None
    with page.expect_navigation():
        page.get_by_role("link", name="Revoke laptop").click()
    with page.expect_navigation():
        page.locator("#confirm-revoke").click()
    key.refresh_from_db()
    assert key.revoked_at is not None
    expect(page.locator(".messages")).to_contain_text("Revoked")
    assert_page_health(page)


def test_auth_titles_match_the_nav_and_password_reset_done_has_a_way_on(page, seeded_catalog):
    page.goto("/pricing/")
    with page.expect_navigation():
        page.locator("header").get_by_role("link", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Log in")
    assert page.title().startswith("Log in")
    expect(page.locator("main").get_by_role("button", name="Log in")).to_be_visible()
    with page.expect_navigation():
        page.locator("header").get_by_role("link", name="Sign up").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign up")
    assert page.title().startswith("Sign up")
    expect(page.locator("main").get_by_role("button", name="Sign up")).to_be_visible()

    page.goto("/accounts/password/reset/key/done/")
    expect(page.locator("main")).to_contain_text("Your password is now changed.")
    with page.expect_navigation():
        page.locator("#password-done-next").click()
    assert path_of(page.url) == "/accounts/login/"
    assert_page_health(page)


def test_favicon_is_served_and_the_focus_ring_contrasts(page, seeded_catalog):
    favicon = page.request.get("/favicon.ico")
    assert favicon.ok, favicon.status
    assert favicon.headers["content-type"].startswith("image/")

    page.goto("/pricing/")
    page.keyboard.press("Tab")  # the skip link
    page.keyboard.press("Tab")  # the brand link
    colour, width, style = page.evaluate(
        "() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineColor, parseFloat(s.outlineWidth), s.outlineStyle]; }"
    )
    assert style != "none" and width >= 2, (colour, width, style)
    assert _contrast_on_white(colour) >= 3, colour
    assert_page_health(page)


def _contrast_on_white(css_colour: str) -> float:
    """WCAG contrast of a CSS rgb()/rgba() colour drawn over white."""
    parts = [float(x) for x in re.findall(r"[\d.]+", css_colour)]
    r, g, b = parts[:3]
    alpha = parts[3] if len(parts) > 3 else 1.0
    blended = [c * alpha + 255 * (1 - alpha) for c in (r, g, b)]

    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    lum = 0.2126 * channel(blended[0]) + 0.7152 * channel(blended[1]) + 0.0722 * channel(blended[2])
    return 1.05 / (lum + 0.05)


# --- Screenshots of the main pages at both widths, for review -------------------------------------------


@WIDTHS
def test_main_pages_screenshots(page, seeded_catalog, viewport, request):
    from pathlib import Path

    from tests.factories import InvoiceFactory, UsageRecordFactory

    email = "screens@example.com"
    _, team = _subscriber(email, tier_slug="pro")
    invoice = InvoiceFactory(subscription=team.subscriptions.get(), paid=True)
    now = datetime.now(UTC)
    for hours in (1, 30, 60, 100):
        UsageRecordFactory(team=team, prompt_tokens=400, completion_tokens=hours * 10,
                           created_at=now - timedelta(hours=hours))  # fmt: skip
    out = Path(request.config.rootpath) / "test-results" / "screens" / str(viewport["width"])
    out.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size(viewport)
    pages = {"home": "/", "pricing": "/pricing/", "login": "/accounts/login/", "signup": "/accounts/signup/",
             "status": "/status/"}  # fmt: skip
    for name, path in pages.items():
        page.goto(path)
        page.screenshot(path=str(out / f"{name}.png"), full_page=True)
    _log_in(page, email)
    signed_in = {"dashboard": "/dashboard/", "dashboard-30d": "/dashboard/?range=30d", "keys": "/keys/",
                 "billing": "/billing/", "invoice": f"/billing/invoices/{invoice.number}/",
                 "pricing-signed-in": "/pricing/", "team": f"/teams/{team.slug}/members/"}  # fmt: skip
    for name, path in signed_in.items():
        page.goto(path)
        assert page.url.endswith(path), (path, page.url)
        page.screenshot(path=str(out / f"{name}.png"), full_page=True)
    assert len(list(out.glob("*.png"))) >= len(pages) + len(signed_in)
    assert_page_health(page)
