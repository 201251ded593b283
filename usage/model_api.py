"""The client-facing model API: the native Llama shape under /v1/ and the OpenAI-compatible shape
under /compat/v1/, so `llama_api_client.LlamaAPIClient(base_url=".../v1")` and
`openai.OpenAI(base_url=".../compat/v1")` work unchanged.

Plain Django views, not DRF: this is the hot path, and content negotiation, DRF's request wrapper and
throttles buy nothing here. Views parse and validate the body (usage/chat_request.py), compute the
simulated answer (usage/chat_completion.py: the simulator's prose, tools, structured output, choices),
admit and record it through the metering service (usage/metering.py), and render it in the caller's
shape (usage/chat_shapes.py).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from core.dependencies import dependency_failure
from core.errors import error_body
from tiers.selectors import language_model_list_active
from usage import chat_shapes, errors, metering
from usage.chat_completion import ChatResult, chat_complete, reserve_tokens
from usage.chat_request import (
    COMPAT,
    MODERATION_PARAMETERS,
    NATIVE,
    PARAMETERS,
    ChatRequest,
    body_parse,
    chat_request_parse,
    message_text,
    messages_parse,
    parameters_check,
    unknown_field,
)
from usage.moderation import MAX_MODERATION_INPUTS, MODERATION_MODELS, openai_moderation
from usage.simulator import moderate

logger = logging.getLogger(__name__)

__all__ = ["COMPAT", "NATIVE", "PARAMETERS"]  # kept importable from here (the bench and tests use them)

MODERATION_MODEL = MODERATION_MODELS[0]
# OpenAI's moderation model names, answered by the same simulated Llama Guard (the first is the default).
COMPAT_MODERATION_MODELS = (
    "omni-moderation-latest", "omni-moderation-2024-09-26", "text-moderation-latest", "text-moderation-stable",
    *MODERATION_MODELS,
)  # fmt: skip
COMPAT_MODERATION_PARAMETERS = frozenset({"model", "input"})
# The helpers bench/profiled_wsgi.py and bench/baseline_urls.py time and reuse under their old names;
# the views call them through these names, so a profiler patching them here sees every call.
_body = body_parse
_chat_request = chat_request_parse
_native_body = chat_shapes.native_body
_compat_body = chat_shapes.compat_body
complete = chat_complete  # "simulated model: model_api.complete" in bench/profiled_wsgi.py


def _json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> JsonResponse:
    return JsonResponse(body, status=status, headers=headers, safe=False, json_dumps_params={"separators": (",", ":")})


def model_api_view(*methods: str) -> Callable:
    """Wraps a model-API view: CSRF-exempt (API keys, not cookies), method check, and every error
    rendered in the ``{"error": {...}}`` shape with its status and headers."""

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            try:
                if request.method not in methods:
                    raise errors.MethodNotAllowed(
                        f"Use {' or '.join(methods)} for this endpoint.", headers={"Allow": ", ".join(methods)}
                    )
                return view(request, *args, **kwargs)
            except errors.ModelApiError as exc:
                headers = dict(exc.headers)
                if exc.retry_after is not None:
                    headers["Retry-After"] = str(exc.retry_after)
                return _json_response(exc.body(), status=exc.status, headers=headers)
            except Exception as exc:
                failure = dependency_failure(exc)  # the database or cache down: 503, retry later
                if failure is not None:
                    logger.warning("model API: %s unavailable: %s: %s", failure.part, type(exc).__name__, exc)
                    body = error_body(failure.message, type_="server_error", code=failure.code)
                    return _json_response(body, status=503, headers={"Retry-After": str(failure.retry_after)})
                logger.exception("model API failure")
                body = error_body("Internal error.", type_="server_error", code="internal_error")
                return _json_response(body, status=500)

        return wrapper

    return decorator


def _chat(request: HttpRequest, *, flavor: str) -> HttpResponse:
    now = timezone.now()
    caller = metering.caller_authenticate(authorization=request.headers.get("Authorization"), now=now)
    client_request_id = request.headers.get("X-Request-Id")
    request_id = metering.request_id_from_header(client_request_id)
    chat = _chat_request(_body(request), flavor=flavor)
    request_hash = _request_hash(request) if client_request_id else ""
    # The simulated completion is deterministic and cheap (about 0.1 ms a choice), so it is computed
    # before admission; its prompt count is the tokenizer's (no second count of the messages).
    completion = _complete(chat)
    # What a request reserves: its prompt and every choice's maximum completion. The simulated model
    # never writes more than MAX_COMPLETION_TOKENS a choice, so reserving more would only block other
    # requests of the team.
    reserve = reserve_tokens(chat, completion.prompt_tokens)
    created = int(now.timestamp())
    headers = {"x-request-id": request_id}

    if chat.stream:
        # Streamed output is sent (and may be cut by the client) after admission: reserve, stream, then
        # settle to what was sent.
        admission = metering.admit(
            caller=caller,
            model=chat.model,
            request_id=request_id,
            tokens=reserve,
            now=now,
            request_id_is_new=not client_request_id,
            request_hash=request_hash,
        )
        return _stream_response(request_id, chat, completion, admission, reserve, created, flavor, headers)

    # Not streamed: admitted, consumed and recorded in ONE quota call (one Redis round trip), checked
    # against the same reservation (prompt + maximum completion) as a streamed request. Same admissions
    # and refusals as reserve-then-settle, half the round trips.
    admission = metering.admit_and_record(
        caller=caller,
        model=chat.model,
        request_id=request_id,
        tokens=reserve,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        now=now,
        request_id_is_new=not client_request_id,
        request_hash=request_hash,
    )
    headers.update(metering.headers_after(admission=admission, tokens_delta=0, now=now))
    body = (
        _native_body(request_id, completion)
        if flavor == NATIVE
        else _compat_body(request_id, chat.model, created, completion)
    )
    return _json_response(body, headers=headers)


def _request_hash(request: HttpRequest) -> str:
    # Only for requests with a client id, whose body is already known to be valid JSON: parsed again
    # here rather than threaded through the parsing above.
    return metering.request_hash(path=request.path_info, body=json.loads(request.body))


def _complete(chat: ChatRequest) -> ChatResult:
    return complete(chat)


def _stream_response(
    request_id, chat, completion, admission, reserve, created, flavor, headers
) -> StreamingHttpResponse:
    sent = {"tokens": 0, "settled": False}
    pieces = chat_shapes.stream_pieces(completion)

    def settle(completion_tokens: int) -> bool:
        sent["settled"] = True
        return metering.settle(admission=admission, prompt_tokens=completion.prompt_tokens,
                               completion_tokens=completion_tokens, now=timezone.now())  # fmt: skip

    def counted_chunks() -> Iterator[chat_shapes.Piece]:
        for piece in pieces:
            yield piece
            sent["tokens"] += piece.tokens
        # Settled before the closing events: a stream certainly not recorded (the database backend
        # failing, e.g. on a full disk) ends with an error event, not as a whole answer for free.
        if not settle(completion.completion_tokens):
            raise errors.QuotaBackendUnavailable(
                "The usage of this request could not be recorded, so its answer is incomplete and not counted. "
                f"Retry in {metering.QUOTA_UNAVAILABLE_RETRY_AFTER_SECONDS} s."
            )

    # A stream that is still being sent after half the reservation timeout (a client reading it very
    # slowly) is cut there, so it is settled well before the sweeper would take its reservation for an
    # abandoned one (TIERLAB_RESERVATION_TIMEOUT_SECONDS bounds every request).
    cut_at = time.monotonic() + settings.TIERLAB_RESERVATION_TIMEOUT_SECONDS / 2

    def events() -> Iterator[bytes]:
        try:
            if flavor == NATIVE:
                stream = chat_shapes.native_stream(request_id, completion, counted_chunks())
            else:
                stream = chat_shapes.compat_stream(
                    request_id, chat.model, created, completion, counted_chunks(), chat.include_usage
                )
            for event in stream:
                if time.monotonic() > cut_at:
                    logger.warning(
                        "stream %s cut after %s s", request_id, settings.TIERLAB_RESERVATION_TIMEOUT_SECONDS / 2
                    )
                    return
                yield event
        except errors.QuotaBackendUnavailable as exc:
            # Both SDKs raise on it: llama-api-client on an "error" event, openai on data with "error".
            yield b"event: error\n" + chat_shapes.sse(exc.body())
        finally:
            # Cut, or the client went away: only what was generated up to that point is counted (the
            # completion tokens of the pieces sent, of every choice and tool call).
            if not sent["settled"]:
                settle(sent["tokens"])

    headers.update(
        metering.headers_after(
            admission=admission,
            tokens_delta=completion.prompt_tokens + completion.completion_tokens - reserve,
            now=timezone.now(),
        )
    )
    response = StreamingHttpResponse(events(), content_type="text/event-stream", headers=headers)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


@model_api_view("POST")
def native_chat_completions(request: HttpRequest) -> HttpResponse:
    return _chat(request, flavor=NATIVE)


@model_api_view("POST")
def compat_chat_completions(request: HttpRequest) -> HttpResponse:
    return _chat(request, flavor=COMPAT)


def _model_objects(caller: metering.Caller) -> list[dict]:
    allowed = caller.entitlements.allowed_models
    return [
        {
            "id": model.model_id,
            "object": "model",
            "created": int(datetime.combine(model.released_on, datetime.min.time()).timestamp()),
            "owned_by": model.owned_by,
        }
        for model in language_model_list_active()
        if model.model_id in allowed
    ]


def _models(request: HttpRequest, *, flavor: str, model_id: str | None = None) -> HttpResponse:
    caller = metering.caller_authenticate(authorization=request.headers.get("Authorization"), now=timezone.now())
    objects = _model_objects(caller)
    if model_id is not None:
        found = next((m for m in objects if m["id"] == model_id), None)
        if found is None:
            metering.model_check(caller=caller, model=model_id)  # raises 404 or 403 with the right code
        return _json_response(found)
    body = {"data": objects} if flavor == NATIVE else {"object": "list", "data": objects}
    return _json_response(body)


@model_api_view("GET")
def native_models(request: HttpRequest, model_id: str | None = None) -> HttpResponse:
    return _models(request, flavor=NATIVE, model_id=model_id)


@model_api_view("GET")
def compat_models(request: HttpRequest, model_id: str | None = None) -> HttpResponse:
    return _models(request, flavor=COMPAT, model_id=model_id)


@model_api_view("POST")
def native_moderations(request: HttpRequest) -> HttpResponse:
    """A simulated Llama Guard. Free, like the providers' moderation endpoints: it needs a valid key
    and counts as a request against the per-minute and per-day windows, but no tokens are billed."""
    now = timezone.now()
    caller = metering.caller_authenticate(authorization=request.headers.get("Authorization"), now=now)
    client_request_id = request.headers.get("X-Request-Id")
    request_id = metering.request_id_from_header(client_request_id)
    body = _body(request)
    parameters_check(body, MODERATION_PARAMETERS)
    messages = messages_parse(body)
    model = body.get("model")
    if model is None:
        model = MODERATION_MODEL
    elif not isinstance(model, str):
        raise errors.InvalidRequest("'model' must be a string.", param="model")
    if model not in MODERATION_MODELS:
        raise errors.ModelNotFound(
            f"The moderation model '{model}' does not exist; use one of {', '.join(MODERATION_MODELS)}.",
            param="model",
        )
    # Computed before admission (keyword matching, microseconds), then admitted and recorded in one step.
    results = moderate([message_text(m) for m in messages])
    admission = metering.admit_and_record(
        caller=caller, model=model, request_id=request_id, tokens=0, prompt_tokens=0, completion_tokens=0, now=now,
        check_model=False, request_id_is_new=not client_request_id,
        request_hash=_request_hash(request) if client_request_id else "",
    )  # fmt: skip
    payload = {
        "model": model,
        "results": [{"flagged": r.flagged, "flagged_categories": list(r.flagged_categories)} for r in results],
    }
    return _json_response(
        payload,
        headers={"x-request-id": request_id, **metering.headers_after(admission=admission, tokens_delta=0, now=now)},
    )


@model_api_view("POST")
def compat_moderations(request: HttpRequest) -> HttpResponse:
    """OpenAI's /moderations shape over the same simulated Llama Guard, metered like the native one
    (free: a request against the per-minute and per-day windows, no tokens). ``input`` is a string, a
    list of strings (one result each) or a list of text/image_url parts (one result for them all; the
    classifier reads the text). Llama Guard's categories map to OpenAI's as usage/moderation.py says."""
    now = timezone.now()
    caller = metering.caller_authenticate(authorization=request.headers.get("Authorization"), now=now)
    client_request_id = request.headers.get("X-Request-Id")
    request_id = metering.request_id_from_header(client_request_id)
    body = _body(request)
    parameters_check(body, COMPAT_MODERATION_PARAMETERS)
    texts, images = _moderation_input(body.get("input"))
    model = body.get("model", COMPAT_MODERATION_MODELS[0])
    if not isinstance(model, str):
        raise errors.InvalidRequest("'model' must be a string.", param="model")
    if model not in COMPAT_MODERATION_MODELS:
        raise errors.ModelNotFound(
            f"The moderation model '{model}' does not exist; use one of {', '.join(COMPAT_MODERATION_MODELS)}.",
            param="model",
        )
    results = moderate(texts)
    admission = metering.admit_and_record(
        caller=caller, model=MODERATION_MODEL, request_id=request_id, tokens=0, prompt_tokens=0, completion_tokens=0,
        now=now, check_model=False, request_id_is_new=not client_request_id,
        request_hash=_request_hash(request) if client_request_id else "",
    )  # fmt: skip
    payload = {
        "id": f"modr-{request_id}",
        "model": model,
        "results": [openai_moderation(result, images=images) for result in results],
    }
    return _json_response(
        payload,
        headers={"x-request-id": request_id, **metering.headers_after(admission=admission, tokens_delta=0, now=now)},
    )


def _moderation_input(value) -> tuple[list[str], int]:
    """The texts to classify and the number of images of OpenAI's ``input``."""
    if isinstance(value, str):
        return [value], 0
    invalid = errors.InvalidRequest(
        f"'input' must be a string, a list of 1-{MAX_MODERATION_INPUTS} strings, or a list of text and image_url"
        " parts.",
        param="input",
    )
    if not isinstance(value, list) or not value or len(value) > MAX_MODERATION_INPUTS:
        raise invalid
    if all(isinstance(item, str) for item in value):
        return list(value), 0
    texts, images = [], 0
    for index, part in enumerate(value):
        where = f"input[{index}]"
        if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            unknown_field(part, frozenset({"type", "text"}), where)
            texts.append(part["text"])
        elif (
            isinstance(part, dict)
            and part.get("type") == "image_url"
            and isinstance(part.get("image_url"), dict)
            and isinstance(part["image_url"].get("url"), str)
        ):
            unknown_field(part, frozenset({"type", "image_url"}), where)
            unknown_field(part["image_url"], frozenset({"url"}), f"{where}.image_url")
            images += 1
        else:
            raise invalid
    return ["\n".join(texts)], images
