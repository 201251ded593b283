"""An operator opens the admin, follows the analytics card and reads the dashboard in a real browser:
charts (inline SVG) and the tables of the same figures render, the range selector works, nothing on
the page is broken. The history is the one tests.partners.test_operator_analytics.py checks figure by figure.
"""

from __future__ import annotations

import re

import pytest
import time_machine
from playwright.sync_api import expect

from tests.billing.test_analytics import NOW, money_history
from tests.e2e.helpers import assert_page_health, fill_fields, path_of
from tests.partners.test_operator_analytics import usage_history

pytestmark = pytest.mark.e2e

OPERATOR_EMAIL = "ops@example.com"
OPERATOR_PASSWORD = "Operator-Console-5150"


def test_operator_reads_the_analytics_dashboard(page, shot, seeded_catalog):
    from tiers import services as tier_services

    # The clock runs from NOW (mid-June 2026) for the whole test, server thread included, so the
    # default 12-month window is Jul 2025 .. Jun 2026 whenever the test runs.
    with time_machine.travel(NOW, tick=True):
        usage_history(money_history(seeded_catalog))
        tier_services.operator_ensure(email=OPERATOR_EMAIL, password=OPERATOR_PASSWORD)

        page.goto("/admin/")
        assert path_of(page.url) == "/admin/login/", page.url
        fill_fields(page, username=OPERATOR_EMAIL, password=OPERATOR_PASSWORD)
        with page.expect_navigation():
            page.get_by_role("button", name=re.compile(r"log in", re.I)).click()
        assert path_of(page.url) == "/admin/"
        card = page.locator("#analytics-card")
        expect(card).to_be_visible()
        shot("admin-index-with-analytics-card")

        with page.expect_navigation():
            card.get_by_role("link", name="Open the analytics dashboard").click()
        assert path_of(page.url) == "/admin/analytics/"
        expect(page.get_by_role("heading", name="Operator analytics", level=1)).to_be_visible()

        # Every section has its chart(s), drawn with a real size, and its table.
        for section in ["mrr", "revenue", "channels", "top-customers", "refusals", "failed-payments"]:
            charts = page.locator(f"#{section} .analytics-chart svg")
            expect(charts.first).to_be_visible()
            box = charts.first.bounding_box()
            assert box and box["width"] > 100 and box["height"] > 50, (section, box)
            expect(page.locator(f"#{section} table").first).to_be_visible()

        expect(page.locator("[data-kpi='mrr-usd'] strong")).to_have_text("$436.67")
        expect(page.locator("#mrr-table [data-tier='pro'] td").last).to_have_text("$400.00")
        march = page.locator("#revenue-table-usd [data-month='2026-03'] td")
        expect(march).to_have_text(["Mar 2026", "$200.00", "$12.34", "$0.00", "$212.34"])
        expect(page.locator("#channels-table-usd [data-month='2026-03'] td").last).to_have_text("$838.84")
        expect(page.locator("#top-customers-table tbody tr").first).to_contain_text("carol@example.com")
        expect(page.locator("#refusals-table [data-tier='free'] td").last).to_have_text("10")
        expect(page.locator("#failed-latest-table tbody tr")).to_have_count(2)
        shot("analytics-12-months")

        # The range selector: the last 3 months (Apr .. Jun 2026).
        page.locator("#analytics-months").select_option("3")
        with page.expect_navigation():
            page.get_by_role("button", name="Show").click()
        assert "months=3" in page.url
        expect(page.locator("#revenue-table-usd tbody tr")).to_have_count(3)
        expect(page.locator("#revenue-table-usd [data-month='2026-04'] td").last).to_have_text("$30.00")
        shot("analytics-3-months")

        # Bad input: a message, the default range, no error page.
        page.goto("/admin/analytics/?months=many")
        expect(page.locator(".messagelist")).to_contain_text("The range must be a whole number of months")
        expect(page.locator("#revenue-table-usd tbody tr")).to_have_count(12)

    assert_page_health(page)
