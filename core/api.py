"""One JSON error shape for the account API, the same as the model API's:
``{"error": {"message", "type", "code", "param"}}``."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from core.dependencies import dependency_failure
from core.errors import ApplicationError, error_body, error_type

logger = logging.getLogger(__name__)


def _first_error(detail) -> tuple[str | None, str]:
    """(field, message) of the first error in a DRF error detail (dict, list or string)."""
    if isinstance(detail, dict):
        for field, value in detail.items():
            inner_field, message = _first_error(value)
            name = None if field in ("non_field_errors", "__all__") else field
            return (f"{name}.{inner_field}" if name and inner_field else name or inner_field), message
    if isinstance(detail, list) and detail:
        return _first_error(detail[0])
    return None, str(detail)


def dependency_unavailable_response(exc: BaseException) -> Response | None:
    """503 with Retry-After in the JSON error shape if ``exc`` says a dependency is down (see
    core/dependencies.py), else None."""
    failure = dependency_failure(exc)
    if failure is None:
        return None
    logger.warning("%s unavailable: %s: %s", failure.part, type(exc).__name__, exc)
    set_rollback()
    return Response(
        error_body(failure.message, type_=error_type(503), code=failure.code),
        status=503,
        headers={"Retry-After": str(failure.retry_after)},
    )


def exception_handler(exc, context):
    if isinstance(exc, ApplicationError):
        return Response(exc.body(), status=exc.status)
    unavailable = dependency_unavailable_response(exc)
    if unavailable is not None:
        return unavailable
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        param, message = _first_error(exc.detail)
        response.data = error_body(message, type_="invalid_request_error", code="invalid", param=param)
        response.data["error"]["details"] = exc.detail
    else:
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else "error"
        response.data = error_body(str(exc.detail), type_=error_type(response.status_code), code=code)
    return response
