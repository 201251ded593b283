"""The URLconf of bench/api_overhead.py's baseline (configuration a; bench/settings_baseline.py).

The project's URLs (config.urls) with the two chat-completion endpoints served unmetered: the same
parsing, validation, simulated model, response body and JSON encoding as the metered views, through
the same helpers of usage/model_api.py, but no key check, no quota and no usage record. Everything
else (middleware, URL resolution through the same ``v1/`` and ``compat/v1/`` includes, the error
wrapper) is the metered server's, so the baseline's cost differs from the metered path's by the
metering alone.

Non-streamed requests only: the benchmark does not stream. The views reach into usage.model_api's
private helpers on purpose: reusing them, not copying them, is what keeps the body the same.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, include, path
from django.utils import timezone

from config import urls as project_urls
from usage import errors, metering, model_api
from usage.urls_model_api import compat_urlpatterns, native_urlpatterns


def _chat_baseline(request: HttpRequest, *, flavor: str) -> HttpResponse:
    """``usage.model_api._chat`` without ``caller_authenticate``, ``admit_and_record`` and the
    rate-limit headers."""
    now = timezone.now()
    request_id = metering.request_id_from_header(request.headers.get("X-Request-Id"))
    chat = model_api._chat_request(model_api._body(request), flavor=flavor)
    if chat.stream:
        raise errors.InvalidRequest("The benchmark baseline serves non-streamed completions only.", param="stream")
    completion = model_api._complete(chat)
    body = (
        model_api._native_body(request_id, completion)
        if flavor == model_api.NATIVE
        else model_api._compat_body(request_id, chat.model, int(now.timestamp()), completion)
    )
    return model_api._json_response(body, headers={"x-request-id": request_id})


@model_api.model_api_view("POST")
def native_chat_completions_baseline(request: HttpRequest) -> HttpResponse:
    return _chat_baseline(request, flavor=model_api.NATIVE)


@model_api.model_api_view("POST")
def compat_chat_completions_baseline(request: HttpRequest) -> HttpResponse:
    return _chat_baseline(request, flavor=model_api.COMPAT)


def _swapped(patterns: list[URLPattern], name: str, view) -> list[URLPattern]:
    """``patterns`` with the view of the pattern named ``name`` replaced, in the same position."""
    found = [p for p in patterns if p.name == name]
    if len(found) != 1:
        raise LookupError(f"usage.urls_model_api has no URL named {name!r}: update bench/baseline_urls.py")
    return [path(str(p.pattern), view, name=name) if p.name == name else p for p in patterns]


_MOUNTS = {
    "v1/": _swapped(native_urlpatterns, "v1-chat-completions", native_chat_completions_baseline),
    "compat/v1/": _swapped(compat_urlpatterns, "compat-chat-completions", compat_chat_completions_baseline),
}


def _baseline_urlpatterns() -> list[URLPattern | URLResolver]:
    patterns, mounted = [], set()
    for entry in project_urls.urlpatterns:
        prefix = str(entry.pattern)
        if isinstance(entry, URLResolver) and prefix in _MOUNTS:
            entry = path(prefix, include(_MOUNTS[prefix]))
            mounted.add(prefix)
        patterns.append(entry)
    if mounted != set(_MOUNTS):
        raise LookupError(
            f"config.urls no longer mounts {sorted(set(_MOUNTS) - mounted)}: update bench/baseline_urls.py"
        )
    return patterns


urlpatterns = _baseline_urlpatterns()
