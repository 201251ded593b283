"""Errors of the client-facing model API, in the shape its clients expect:
``{"error": {"message", "type", "code", "param"}}`` (core.errors.error_body) with the HTTP status the
official SDKs map to their typed exceptions (401 AuthenticationError, 403 PermissionDeniedError, 429
RateLimitError, ...). The type is the one the status implies (core.errors.ERROR_TYPES) unless a class
names its own, as OpenAI's API does for a missing model and an exhausted quota."""

from __future__ import annotations

from core.errors import ApplicationError


class ModelApiError(ApplicationError):
    """400 by default. ``param`` names the request field at fault; ``retry_after`` (seconds) becomes
    the Retry-After header; ``headers`` are added to the error response."""

    code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message, code=code, extra={"field": param} if param is not None else None)
        self.retry_after = retry_after
        self.headers = headers or {}


class InvalidRequest(ModelApiError):
    """400: the body is malformed; ``param`` names the field."""


class InvalidApiKey(ModelApiError):
    status = 401
    code = "invalid_api_key"


class ModelNotAllowed(ModelApiError):
    status = 403
    code = "model_not_allowed"


class InsufficientScope(ModelApiError):
    """403: the API key lacks the ``model`` scope (an account-API-only key)."""

    status = 403
    code = "insufficient_scope"


class ApiAccessNotIncluded(ModelApiError):
    """403: the key's team is on a tier without API access (a playground-only consumer tier)."""

    status = 403
    code = "api_access_not_included"


class LicenseRequired(ModelApiError):
    """403: the team's products passed the monthly-active-user threshold; models released since need
    a licence agreement, which operators grant in the admin."""

    status = 403
    code = "license_required"


class ModelNotFound(ModelApiError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RateLimited(ModelApiError):
    """429 for a per-minute/day window: retry after ``retry_after`` seconds."""

    status = 429
    code = "rate_limit_exceeded"


class QuotaExceeded(ModelApiError):
    """429 for the monthly quota under a hard cap (or a spend cap): retry in the next period."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class SubscriptionInactive(ModelApiError):
    """429 for a suspended, canceled or long past-due subscription: fix billing first."""

    status = 429
    type = "billing_error"
    code = "subscription_inactive"


class RequestIdReused(ModelApiError):
    """409: the ``X-Request-Id`` was already used for a different request (within the retention; see
    DESIGN.md "Request ids"). Nothing was counted; send a new id."""

    status = 409
    code = "request_id_reused"


class RequestInProgress(ModelApiError):
    """409: a request with this ``X-Request-Id`` and the same body is still in progress (admitted, not
    finished yet), as Stripe answers a reused idempotency key whose first request has not completed.
    Nothing was counted; retry after ``retry_after`` seconds."""

    status = 409
    code = "request_id_in_progress"


class QuotaBackendUnavailable(ModelApiError):
    """503: the quota backend (Redis, or the database) did not answer in time, so the request cannot be
    checked against the limits. Nothing was counted for it; retry after ``retry_after`` seconds."""

    status = 503
    type = "server_error"
    code = "quota_backend_unavailable"


class RequestTooLarge(ModelApiError):
    """413: the body is over the size limit (core.middleware refuses most of these first)."""

    status = 413
    code = "request_too_large"


class MethodNotAllowed(ModelApiError):
    status = 405
    code = "method_not_allowed"
