"""Real-browser fixtures: Debian's chromium driven by Playwright (sync API) against pytest-django's live server.

The live server runs in a thread of the test process, so the locmem email outbox (``mailoutbox``) sees
the mail the browser's requests send, and the test reads the database the server writes.

No browser: the e2e tests are skipped with the reason shown, except where ``TIERLAB_REQUIRE_BROWSER=1``
(CI sets it), where a missing browser is a failure, so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Playwright's sync API runs an asyncio event loop in the test thread (in a greenlet), and Django refuses
# synchronous ORM calls from a thread with a running loop: the tests' own queries between browser steps,
# and any later test's while the session-scoped browser is alive. Nothing here is async code, so the
# guard is switched off for the process, which is why this is set at import and not per test.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = os.environ.get("TIERLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Generous for a loaded 2-core CI machine; a step that takes longer than this is a real failure.
STEP_TIMEOUT_MS = 15_000


def _browser_required() -> bool:
    return os.environ.get("TIERLAB_REQUIRE_BROWSER") == "1"


def _no_browser(reason: str) -> None:
    if _browser_required():
        pytest.fail(f"{reason} (TIERLAB_REQUIRE_BROWSER=1, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    # Keep each phase's report on the item, so the page fixture knows at teardown whether the test failed.
    report = yield
    setattr(item, f"_e2e_report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        found = shutil.which("chromium")
        _no_browser(
            f"e2e: no chromium at {CHROMIUM} (apt-get install chromium)"
            + (f"; one was found at {found}, set TIERLAB_CHROMIUM" if found else "")
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - the venv installs it
        _no_browser(f"e2e: Python playwright is not installed ({exc})")

    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as exc:
            _no_browser(f"e2e: chromium at {CHROMIUM} did not start: {exc}")
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def e2e_db(transactional_db):
    """A clean database the live server's thread can see, and a clean cache.

    allauth's rate limits (failed logins, password resets) live in the cache; the locmem cache outlives
    a test, so it is cleared to keep each test independent of the ones before it.
    """
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def seeded_catalog(e2e_db):
    """The seed catalog, written through the service as ``make run`` does."""
    from tiers import services as tier_services
    from tiers.models import Tier

    tier_services.tier_catalog_seed()
    return {tier.slug: tier for tier in Tier.objects.all()}


@pytest.fixture
def results_dir(request) -> Path:
    """test-results/e2e/<test-name>/ (gitignored), emptied at the start of the test."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    path = Path(request.config.rootpath) / "test-results" / "e2e" / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


@pytest.fixture
def page(browser, live_server, e2e_db, results_dir, request):
    """A fresh browser context (no cookies) and page, whose relative URLs go to the live server.

    On failure the last state of the page is saved as ``failure.png`` and ``failure.html``. axe-core audits
    every document the context loads; a serious or critical violation fails the test at teardown.
    """
    from tests.e2e import axe_check

    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(STEP_TIMEOUT_MS)
    context.set_default_navigation_timeout(STEP_TIMEOUT_MS)
    # axe-core audits every document any page of this context loads (see axe_check).
    axe = axe_check.AxeWatch()
    context.on("page", axe.watch)
    page = context.new_page()
    page.e2e_axe = axe  # type: ignore[attr-defined]
    axe_check.install(axe)
    # What went wrong in the page, for the tests to assert on at the end: uncaught script errors, and
    # same-origin requests (stylesheets, scripts, images) that failed. The browser's own /favicon.ico
    # probe is not the page's doing.
    script_errors: list[str] = []
    broken_requests: dict[str, str] = {}  # url -> what went wrong
    page.on("pageerror", lambda exc: script_errors.append(str(exc)))

    def ours(url: str) -> bool:
        return url.startswith(live_server.url) and not url.endswith("/favicon.ico")

    def note_response(response) -> None:
        if response.status >= 400 and response.request.resource_type != "document" and ours(response.url):
            broken_requests[response.url] = f"HTTP {response.status}"

    def note_failure(request) -> None:
        # ERR_ABORTED is the browser dropping a request because the page navigated away (or had already
        # been answered with an error status, noted above): not a broken resource.
        if ours(request.url) and "ERR_ABORTED" not in (request.failure or ""):
            broken_requests.setdefault(request.url, request.failure or "failed")

    page.on("response", note_response)
    page.on("requestfailed", note_failure)
    page.e2e_script_errors = script_errors  # type: ignore[attr-defined]
    page.e2e_broken_requests = broken_requests  # type: ignore[attr-defined]
    try:
        yield page
        axe.audit_pending()
    finally:
        axe_check.uninstall(axe)
        report = getattr(request.node, "_e2e_report_call", None)
        if report is not None and report.failed:
            try:
                page.screenshot(path=str(results_dir / "failure.png"), full_page=True)
                (results_dir / "failure.html").write_text(page.content())
            except Exception:  # noqa: S110 - best effort; the test has already failed
                pass
        context.close()
    # Checked only once the test itself passed: a failed test's own message is the one to read.
    if report is None or not report.failed:
        assert axe.violations == [], "axe-core: serious or critical violations:\n" + "\n".join(axe.violations)


@pytest.fixture
def shot(page, results_dir) -> Callable[[str], Path]:
    """``shot("signup-filled")`` saves a numbered full-page screenshot of the current page."""
    counter = {"n": 0}

    def take(label: str) -> Path:
        counter["n"] += 1
        path = results_dir / f"{counter['n']:02d}-{label}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
