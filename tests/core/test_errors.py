"""The one JSON error shape: an ApplicationError's body, its type from its HTTP status unless it names
its own, the field at fault as ``param``."""

from __future__ import annotations

from core.errors import ApplicationError, error_body


class _Missing(ApplicationError):
    status = 404
    code = "missing"


class _OutOfQuota(ApplicationError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


def test_the_type_follows_the_status_unless_the_error_names_its_own():
    assert ApplicationError("Bad.", extra={"field": "tier"}).body() == error_body(
        "Bad.", type_="invalid_request_error", code="application_error", param="tier"
    )
    assert _Missing("Gone.").body()["error"] == {
        "message": "Gone.",
        "type": "not_found_error",
        "code": "missing",
        "param": None,
    }
    assert _OutOfQuota("Out.").body()["error"]["type"] == "insufficient_quota"
    assert ApplicationError("Conflict.", code="busy").body()["error"]["code"] == "busy"
