"""The project's one root exception and the one JSON error shape. Services raise ApplicationError's
subclasses; views and the APIs turn them into a form error or the JSON error shape."""

from __future__ import annotations

from typing import Any

# The error "type" an HTTP status implies in the JSON error shape, named as the OpenAI and Llama APIs
# name them (their SDKs pick an exception class by the status; clients read type and code).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


def error_type(status: int) -> str:
    """The error type ``status`` implies (invalid_request_error for the statuses without their own)."""
    return ERROR_TYPES.get(status, "invalid_request_error")


def error_body(message: str, *, type_: str, code: str, param: str | None = None) -> dict[str, Any]:
    """The JSON error shape of every TierLab API: ``{"error": {"message", "type", "code", "param"}}``."""
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


class ApplicationError(Exception):
    """A rule of the domain was broken. ``code`` is stable and machine-readable; ``status`` is the
    HTTP status an API answers with, and ``type`` the error's type in the JSON shape (None: the one
    the status implies, see ERROR_TYPES). ``extra["field"]`` names the field at fault, if any."""

    code = "application_error"
    status = 400
    type: str | None = None

    def __init__(self, message: str, *, code: str | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        """This error in the JSON error shape."""
        return error_body(
            self.message, type_=self.type or error_type(self.status), code=self.code, param=self.extra.get("field")
        )
