"""The APIs' boundary (/v1/, /compat/v1/, /api/): bodies are bounded before any view reads them, and
Django's own 404 and 405 pages become the JSON error shape there (an HTML page, and in debug mode a
list of every URL pattern, is no answer for an SDK).

Bodies: a Content-Length over the limit is refused with 413 ``request_too_large`` before anything is
read; the limit is TIERLAB_MAX_BODY_BYTES, or TIERLAB_PARTNER_MAX_BODY_BYTES for the partner ingest
(1,000 events a batch). A body without Content-Length (``Transfer-Encoding: chunked``) is read by
Django as empty unless the server marks its input as terminated (``wsgi.input_terminated``, as
gunicorn does); then it is read here up to the limit and refused past it, so no path reads without
bound. Django's RequestDataTooBig (DATA_UPLOAD_MAX_MEMORY_SIZE, raised on ``request.body``) is the
same 413 on these paths rather than Django's HTML 400.

Failures: no HTML page under these paths, in debug mode or not. An exception a view lets through is
answered here: 503 with ``Retry-After`` when a dependency is down (core/dependencies.py: the database,
the cache, the broker), else 500 ``internal_error`` (logged with its traceback). A 500 page that
Django made from an exception elsewhere (an inner middleware) becomes the JSON 500. Pages outside the
APIs get a short 503 page with ``Retry-After`` when a dependency is down, instead of a 500 (or, in
debug mode, the debug page); other exceptions on pages stay Django's.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.handlers.wsgi import LimitedStream
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string

from core.dependencies import dependency_failure
from core.errors import error_body, error_type

logger = logging.getLogger(__name__)

API_PATH = re.compile(r"^/(?:(?:compat/)?v1|api)(?:/|$)")
PARTNER_INGEST_PATH = "/api/v1/partner/usage-events"


def _error(status: int, message: str, *, code: str, headers: dict[str, str] | None = None) -> JsonResponse:
    return JsonResponse(error_body(message, type_=error_type(status), code=code), status=status, headers=headers)


def _too_large(limit: int) -> JsonResponse:
    return _error(413, f"The request body is larger than {limit:,} bytes.", code="request_too_large")


def _is_json(response: HttpResponse) -> bool:
    return response.get("Content-Type", "").startswith("application/json")


class ApiBoundaryMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path_info
        if not API_PATH.match(path):
            return self.get_response(request)
        limit = (
            settings.TIERLAB_PARTNER_MAX_BODY_BYTES if path == PARTNER_INGEST_PATH else settings.TIERLAB_MAX_BODY_BYTES
        )
        refusal = self._body_refusal(request, limit)
        if refusal is not None:
            return refusal
        response = self.get_response(request)
        if response.status_code >= 500 and not _is_json(response):
            return _error(500, "Internal error.", code="internal_error")
        if response.status_code == 404 and not _is_json(response):
            return _error(404, f"There is no endpoint at {path}.", code="not_found")
        if response.status_code == 405 and not _is_json(response):
            allow = response.get("Allow", "")
            return _error(
                405, f"Use {allow or 'another method'} for this endpoint.", code="method_not_allowed",
                headers={"Allow": allow} if allow else None,
            )  # fmt: skip
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        api = bool(API_PATH.match(request.path_info))
        if isinstance(exception, RequestDataTooBig) and api:
            return _too_large(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        failure = dependency_failure(exception)
        if failure is not None:
            logger.warning("%s %s: %s unavailable: %r", request.method, request.path, failure.part, exception)
            headers = {"Retry-After": str(failure.retry_after)}
            if api:
                return _error(503, failure.message, code=failure.code, headers=headers)
            # A page of its own, rendered without the request: base.html's navigation reads the
            # session and the user, which need the very database that may be down.
            page = render_to_string("503.html", {"message": failure.message, "part": failure.part})
            return HttpResponse(page, status=503, headers=headers)
        if api:
            logger.error("%s %s failed", request.method, request.path, exc_info=exception)
            return _error(500, "Internal error.", code="internal_error")
        return None

    @staticmethod
    def _body_refusal(request: HttpRequest, limit: int) -> HttpResponse | None:
        declared = request.META.get("CONTENT_LENGTH")
        if declared:
            try:
                length = int(declared)
            except ValueError:
                return _error(400, "Content-Length must be a number of bytes.", code="invalid_request")
            return _too_large(limit) if length > limit else None
        if "HTTP_TRANSFER_ENCODING" in request.META and request.META.get("wsgi.input_terminated"):
            body = request.META["wsgi.input"].read(limit + 1)
            if len(body) > limit:
                return _too_large(limit)
            # The bounded body, re-read by the view as if it had come with its Content-Length.
            request.META["CONTENT_LENGTH"] = str(len(body))
            request._stream = LimitedStream(io.BytesIO(body), len(body))
        return None
