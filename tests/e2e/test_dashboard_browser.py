"""A subscriber with usage logs in and reads /dashboard/ in a real browser: the gauges, the SVG charts
(their data-* values and labels), the table fallback and the estimated bill show the figures of the
history tests/usage/test_dashboard.py checks by hand; the spend-cap form works; the page loads nothing
from outside the live server."""

from __future__ import annotations

import re

import pytest
import time_machine
from playwright.sync_api import expect

from tests.e2e.helpers import assert_page_health, fill_fields, path_of, submit_form_with
from tests.usage.test_dashboard import BIG, NOW, OTHER_MODEL, PASSWORD, SMALL, build_history

pytestmark = pytest.mark.e2e


def _chart_values(page, figure_id: str) -> dict[tuple[str, str], int]:
    """(series, label) -> value of every bar or point of a chart, read from the DOM."""
    found = page.locator(f"#{figure_id} .chart-mark").evaluate_all(
        "els => els.map(e => [e.closest('[data-series]').dataset.series, e.dataset.label, Number(e.dataset.value)])"
    )
    return {(series, label): value for series, label, value in found}


def test_subscriber_reads_the_dashboard(page, shot, seeded_catalog, live_server):
    external: list[str] = []
    page.on("request", lambda r: None if r.url.startswith((live_server.url, "data:")) else external.append(r.url))

    # The clock runs from NOW (early in a minute) for the whole test, server thread included, so the
    # "this minute" gauges still see the history's last two requests when the page is read.
    with time_machine.travel(NOW, tick=True):
        user, _, _ = build_history(seeded_catalog)

        page.goto("/dashboard/")
        assert path_of(page.url) == "/accounts/login/", page.url
        fill_fields(page, login=user.email, password=PASSWORD)
        submit_form_with(page, "login")
        if path_of(page.url) != "/dashboard/":
            page.goto("/dashboard/")
        assert path_of(page.url) == "/dashboard/", page.url

        # --- Tier and period.
        expect(page.locator("#subscription [data-tier='metered']")).to_be_visible()
        expect(page.locator("#period")).to_have_text("May 4, 2026 \N{EN DASH} Jun 4, 2026")
        expect(page.locator("#days-left")).to_have_text("14")

        # --- Gauges: used / limit, and the level colour band.
        gauges = page.locator("#gauges")
        expect(gauges.locator("[data-gauge='requests_minute'] .gauge-figure")).to_have_text("2 / 10 requests")
        expect(gauges.locator("[data-gauge='tokens_minute'] .gauge-figure")).to_have_text("300 / 5,000 tokens")
        expect(gauges.locator("[data-gauge='requests_day'] .gauge-figure")).to_have_text("3 / 100 requests")
        period = gauges.locator("[data-gauge='tokens_period']")
        expect(period.locator(".gauge-figure")).to_have_text("9,100 / 8,000 tokens")
        expect(period).to_have_attribute("data-percent", "113")
        expect(period.locator("[role='meter']")).to_have_attribute("aria-valuenow", "9100")
        # Over 100%: the bar is full (it does not overflow) and painted in the danger colour.
        fill = period.locator(".gauge-fill")
        assert fill.evaluate("e => e.style.width") == "100%"
        assert fill.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(180, 35, 24)"

        # --- Charts: drawn with a real size, with the exact values on their marks.
        svg = page.locator("#tokens-chart svg")
        expect(svg).to_be_visible()
        box = svg.bounding_box()
        assert box and box["width"] > 400 and box["height"] > 100, box
        tokens = _chart_values(page, "tokens-chart")
        assert len(tokens) == 2 * 17
        assert {k: v for k, v in tokens.items() if v} == {
            (SMALL, "May 10"): 3_000,
            (BIG, "May 15"): 5_000,
            (SMALL, "May 20"): 1_100,
        }
        requests = _chart_values(page, "requests-chart")
        assert {k: v for k, v in requests.items() if v} == {
            (SMALL, "May 10"): 3,
            (BIG, "May 15"): 2,
            (SMALL, "May 20"): 3,
        }
        # The tallest stacked bar (May 15, 5,000 tokens) is drawn taller than the May 10 one (3,000).
        heights = page.locator("#tokens-chart rect.chart-mark").evaluate_all(
            "els => Object.fromEntries(els.filter(e => e.dataset.value !== '0')"
            ".map(e => [e.dataset.label, e.getBoundingClientRect().height]))"
        )
        assert heights["May 15"] == pytest.approx(heights["May 10"] * 5 / 3, rel=0.05)
        expect(page.locator("#tokens-chart .chart-legend-item")).to_have_text([BIG, SMALL])
        expect(page.locator("#range-tokens")).to_have_text("9,100")

        # --- The table fallback holds the same numbers.
        page.locator("#usage-table-details summary").click()
        expect(page.locator("#usage-table tr[data-label='May 15'] td")).to_have_text(
            ["2", "5,000", "0", "0", "2", "5,000"]
        )

        # --- The estimated bill: this period's fee was billed when it began; the next invoice bills the
        # next period's fee and this period's overage.
        expect(page.locator("#bill-fee")).to_contain_text("Paid")
        expect(page.locator("#bill-overage")).to_have_text("$1.10")
        expect(page.locator("#bill-total")).to_contain_text("$1.10")
        expect(page.locator("#next-fee")).to_have_text("$10.00")
        expect(page.locator("#next-invoice-total")).to_contain_text("$11.10")
        expect(page.locator("#alerts")).to_contain_text("Your team has used 80% of its monthly tokens.")
        expect(page.locator("main")).not_to_contain_text(OTHER_MODEL)
        page.evaluate("window.scrollTo(0, 0)")  # the sticky header would cover the middle of the shot
        shot("dashboard")

        # --- The range selector: the last 7 days.
        page.locator("#id_range").select_option("7d")
        with page.expect_navigation():
            page.locator("#range-form").get_by_role("button", name="Show").click()
        assert "range=7d" in page.url
        labels = list(dict.fromkeys(label for _, label in _chart_values(page, "tokens-chart")))
        assert labels == [f"May {d}" for d in range(14, 21)]
        shot("dashboard-7-days")

        # --- A hard spend cap of $20 turns the period gauge into the capped allowance.
        page.goto("/dashboard/")
        page.locator("#spend-cap-form [name='amount']").fill("20")
        page.locator("#spend-cap-form [name='mode'][value='hard']").check()
        with page.expect_navigation():
            page.locator("#spend-cap-save").click()
        expect(page.locator(".messages")).to_contain_text("Spend cap saved.")
        expect(page.locator("#spend-cap-current")).to_contain_text("$20.00")
        expect(period.locator(".gauge-figure")).to_have_text(re.compile(r"9,100 / 18,000 tokens"))
        shot("dashboard-spend-cap")

        # --- Below the tier fee: a form error on the field, nothing saved.
        page.locator("#spend-cap-form [name='amount']").fill("5")
        with page.expect_navigation():
            page.locator("#spend-cap-save").click()
        expect(page.locator("#amount-errors")).to_contain_text("at least the tier fee")

    assert external == [], f"the page loaded external URLs: {external}"
    assert_page_health(page)
