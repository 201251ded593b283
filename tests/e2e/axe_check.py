"""axe-core on every page an e2e test visits, without the tests asking for it.

axe-core's JavaScript comes from the PyPI package ``axe-playwright-python`` (pinned in requirements.txt;
it bundles ``axe.min.js``, axe-core 4.12.1, MPL-2.0), so CI needs no Node and nothing is fetched.

How every page gets checked, deterministically: a ``load`` listener only notes that a page has a new
document (a listener must not drive the page: in Playwright's sync API the test's own next call may run
while the listener waits, and navigate the document away under axe). The audit itself runs just before
the test's next Playwright call of any kind (a click, a fill, an assertion, a goto), and once more at
teardown: so each document is audited in the state the test found it, before the test acts on it. This
is done by wrapping ``SyncBase._sync``, the one door every sync API call goes through, for the duration
of one test (the wrapper is reentrant-safe: the audit's own calls pass straight through).

Refused: any violation of impact ``serious`` or ``critical``. Minor and moderate ones are reported in
the failure message only when a refused one is there too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import greenlet
from axe_playwright_python.base import AXE_SCRIPT
from playwright._impl._sync_base import SyncBase
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page

REFUSED_IMPACTS = frozenset({"serious", "critical"})
# WCAG 2.x A and AA plus axe's best practices: the rule set the audit used.
AXE_OPTIONS = {"resultTypes": ["violations"]}


@dataclass
class AxeWatch:
    """The pages with a document not audited yet, and what the audits found."""

    main: Any = field(default_factory=greenlet.getcurrent)
    pending: list[Page] = field(default_factory=list)
    audited: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    busy: bool = False

    def watch(self, page: Page) -> None:
        def loaded(_page: Page) -> None:
            if page not in self.pending:
                self.pending.append(page)

        page.on("load", loaded)

    def audit_pending(self) -> None:
        if self.busy or not self.pending or greenlet.getcurrent() is not self.main:
            return
        self.busy = True
        try:
            while self.pending:
                self._audit(self.pending.pop(0))
        finally:
            self.busy = False

    def _audit(self, page: Page) -> None:
        if page.is_closed():
            return
        url = page.url
        try:
            page.evaluate(AXE_SCRIPT)
            results = page.evaluate("options => axe.run(document, options)", AXE_OPTIONS)
        except PlaywrightError as exc:
            # The document went away between its load and the test's next call (a redirect by script).
            self.missed.append(f"{url}: {exc.message.splitlines()[0]}")
            return
        self.audited.append(url)
        for violation in results["violations"]:
            if violation.get("impact") in REFUSED_IMPACTS:
                targets = ", ".join(" ".join(node["target"]) for node in violation["nodes"][:5])
                self.violations.append(
                    f"{url}: {violation['id']} ({violation['impact']}): {violation['help']} -- {targets}"
                )


_installed: list[AxeWatch] = []
_original_sync = SyncBase._sync


def _sync_with_audit(self: SyncBase, awaitable: Any) -> Any:
    __tracebackhide__ = True
    if _installed:
        _installed[-1].audit_pending()
    return _original_sync(self, awaitable)


def install(watch: AxeWatch) -> None:
    _installed.append(watch)
    SyncBase._sync = _sync_with_audit  # type: ignore[method-assign]


def uninstall(watch: AxeWatch) -> None:
    _installed.remove(watch)
    if not _installed:
        SyncBase._sync = _original_sync  # type: ignore[method-assign]
