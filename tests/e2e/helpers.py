"""Small browser steps shared by the e2e tests.

Elements are found by field name, role, label text or the id/data- hooks the templates promise
(``#nav-logout``, ``#subscription``, ``[data-tier]``), never by CSS classes or layout, so a restyle of
the templates does not break these tests.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from django.core.mail import EmailMessage
    from playwright.sync_api import Locator, Page


def form_with(page: Page, field_name: str) -> Locator:
    """The form that holds the input called ``field_name`` (pages have a second form: the nav's log-out)."""
    return page.locator(f"form:has([name='{field_name}'])")


def submit_form_with(page: Page, field_name: str) -> None:
    """Click the main submit button of the form holding ``field_name`` and wait for the page it leads to.

    The main button is the form's first submit button, the one Enter would press; buttons that submit
    another form (allauth's "Cancel" posts to log-out through ``form="..."``) are not it.
    """
    form = form_with(page, field_name)
    with page.expect_navigation():
        form.locator("button[type=submit]:not([form]), input[type=submit]:not([form])").first.click()


def fill_fields(page: Page, **values: str) -> None:
    for name, value in values.items():
        page.locator(f"[name='{name}']").fill(value)


def path_of(url: str) -> str:
    return urlsplit(url).path


def link_in_email(message: EmailMessage, path_pattern: str) -> str:
    """The path (and query) of the first link in ``message`` whose path matches ``path_pattern``.

    Only the path is returned: the test opens it on the live server whatever host the email names.
    """
    bodies = [message.body] + [content for content, _mime in getattr(message, "alternatives", [])]
    for body in bodies:
        for url in re.findall(r"https?://[^\s\"'<>]+", body):
            parts = urlsplit(url)
            if re.search(path_pattern, parts.path):
                return parts.path + (f"?{parts.query}" if parts.query else "")
    raise AssertionError(f"no link matching {path_pattern!r} in email {message.subject!r}:\n{message.body}")


def main_text(page: Page) -> str:
    """The visible text of the page's main content (falls back to the body)."""
    main = page.locator("main")
    return (main.first if main.count() else page.locator("body")).inner_text()


def assert_page_health(page: Page) -> None:
    """No uncaught script error and no broken stylesheet, script or image on any page the test visited."""
    assert page.e2e_script_errors == [], f"script errors: {page.e2e_script_errors}"
    assert page.e2e_broken_requests == {}, f"broken page resources: {page.e2e_broken_requests}"


# Stripe's test cards as a person types them (https://docs.stripe.com/testing).
CARD_VISA = "4242 4242 4242 4242"
CARD_DECLINED = "4000 0000 0000 0002"
CARD_3D_SECURE = "4000 0027 6000 3184"


def card_type(page: Page, number: str, *, form: str = "#checkout-form") -> None:
    """Type a card into the Stripe.js card Element of ``form`` (localstripe's stand-in: plain inputs,
    named by billing/card-entry.js), with a future expiry date and a CVC, as a person would."""
    element = page.locator(f"{form} [data-card-element]")
    number_input = element.get_by_label("Card number")
    number_input.fill("")
    number_input.press_sequentially(number)
    element.get_by_label("Expiry month (MM)").fill("12")
    element.get_by_label("Expiry year (YY)").fill("34")
    element.get_by_label("CVC").fill("123")


def three_d_secure_answer(page: Page, *, complete: bool) -> None:
    """Answer the 3-D Secure dialog Stripe.js shows (localstripe's: two buttons)."""
    page.get_by_role("button", name="Complete authentication" if complete else "Fail authentication").click()
