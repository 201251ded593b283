"""The project's one root exception. Services raise its subclasses; views and the API turn them
into a form error or the JSON error shape."""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    """A rule of the domain was broken. ``code`` is stable and machine-readable."""

    code = "application_error"

    def __init__(self, message: str, *, code: str | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extra = extra or {}
