"""The client-facing model API: the native Llama shape under /v1/ and the OpenAI-compatible shape
under /compat/v1/, so `llama_api_client.LlamaAPIClient(base_url=".../v1")` and
`openai.OpenAI(base_url=".../compat/v1")` work unchanged.

Plain Django views, not DRF: this is the hot path, and content negotiation, DRF's request wrapper and
throttles buy nothing here. Views parse and validate the body, then call the metering service
(usage/metering.py) and the simulated model (usage/simulator.py).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from core.dependencies import dependency_failure
from core.errors import error_body
from core.json_input import JsonInputError, json_loads_bounded
from tiers.selectors import language_model_list_active
from usage import errors, metering
from usage.moderation import MODERATION_MODELS
from usage.simulator import MAX_COMPLETION_TOKENS, complete, iter_chunks, moderate

logger = logging.getLogger(__name__)

NATIVE = "llama"
COMPAT = "openai"
ROLES = {"system", "user", "assistant", "tool"}
# What a message may carry, as the Llama and OpenAI APIs define it (an assistant message from a response
# can be sent back as it is); anything else is a 400 naming it, as both APIs do. The simulated model
# reads role and content only.
# Field -> (types allowed, what the 400 says). Tool calls come with tools (not yet simulated).
MESSAGE_STRINGS = {"name": (str,), "stop_reason": (str,), "tool_call_id": (str,), "refusal": (str, type(None))}
MESSAGE_FIELDS = frozenset({"role", "content", *MESSAGE_STRINGS})
PART_FIELDS = {"text": frozenset({"type", "text"}), "image_url": frozenset({"type", "image_url"})}


def _unknown_field(obj: dict, allowed: frozenset, where: str) -> None:
    for name in obj:
        if name not in allowed:
            param = f"{where}.{name}"
            raise errors.InvalidRequest(f"Unknown parameter '{param}'.", param=param)


MODERATION_MODEL = MODERATION_MODELS[0]


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


# --- Request parsing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict]
    max_tokens: int | None
    stream: bool
    include_usage: bool
    temperature: float | None
    seed: int | None


def _body(request: HttpRequest) -> dict:
    """The JSON object of the body, bounded (core.json_input: depth, lone surrogates and NUL are a 400
    naming the param); core.middleware has already refused a body over TIERLAB_MAX_BODY_BYTES."""
    try:
        body = json_loads_bounded(request.body)
    except RequestDataTooBig as exc:
        raise errors.RequestTooLarge(
            f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes."
        ) from exc
    except JsonInputError as exc:
        raise errors.InvalidRequest(exc.message, param=exc.param) from exc
    if not isinstance(body, dict):
        raise errors.InvalidRequest("The request body must be a JSON object.")
    return body


def _int(body: dict, name: str, *, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise errors.InvalidRequest(f"'{name}' must be an integer >= {minimum}.", param=name)
    return value


def _number(body: dict, name: str, *, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise errors.InvalidRequest(f"'{name}' must be a number from {low} to {high}.", param=name)
    return float(value)


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise errors.InvalidRequest("'messages' must be a non-empty list of messages.", param="messages")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise errors.InvalidRequest(f"'{where}' must be an object with 'role' and 'content'.", param=where)
        _unknown_field(message, MESSAGE_FIELDS, where)
        for name, types in MESSAGE_STRINGS.items():
            if name in message and not isinstance(message[name], types):
                param = f"{where}.{name}"
                raise errors.InvalidRequest(f"'{param}' must be a string.", param=param)
        if not isinstance(message.get("role"), str) or message["role"] not in ROLES:
            raise errors.InvalidRequest(
                f"'{where}.role' must be one of {', '.join(sorted(ROLES))}.", param=f"{where}.role"
            )
        content = message.get("content")
        if content is None and message.get("role") == "assistant":
            continue
        if isinstance(content, str):
            continue
        if isinstance(content, dict):  # the Llama API also accepts a single content item
            content = [content]
        if not isinstance(content, list) or not all(
            isinstance(part, dict) and isinstance(part.get("type"), str) and part["type"] in {"text", "image_url"}
            for part in content
        ):
            raise errors.InvalidRequest(
                f"'{where}.content' must be a string or a list of text/image_url parts.", param=f"{where}.content"
            )
        for part_index, part in enumerate(content):
            _unknown_field(part, PART_FIELDS[part["type"]], f"{where}.content[{part_index}]")
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                param = f"{where}.content[{part_index}].text"
                raise errors.InvalidRequest(f"'{param}' must be a string.", param=param)
            if part["type"] == "image_url" and not _image_url_valid(part.get("image_url")):
                param = f"{where}.content[{part_index}].image_url"
                raise errors.InvalidRequest(f"'{param}' must be a URL string or {{\"url\": ...}}.", param=param)
    return messages


# The parameters each API takes; any other is a 400 naming it, as the Llama and OpenAI APIs answer (a
# parameter silently ignored would make a client believe it had an effect). ``user`` is accepted and
# only logged by the real APIs: here it has no effect; ``top_k`` and ``repetition_penalty`` (Llama)
# do not change the simulated answer either.
_COMMON_PARAMETERS = {"model", "messages", "max_completion_tokens", "stream", "temperature", "top_p", "seed", "user"}
PARAMETERS = {
    NATIVE: frozenset({*_COMMON_PARAMETERS, "top_k", "repetition_penalty"}),
    COMPAT: frozenset({*_COMMON_PARAMETERS, "max_tokens", "stream_options"}),
}
MODERATION_PARAMETERS = frozenset({"model", "messages"})


def _parameters_check(body: dict, allowed: frozenset) -> None:
    for name in body:
        if name not in allowed:
            raise errors.InvalidRequest(f"Unknown parameter '{name}': this API does not support it.", param=name)


def _image_url_valid(value: Any) -> bool:
    """A URL string (the Llama API) or {"url": "...", "detail": "..."} (OpenAI); absent is accepted."""
    if value is None or isinstance(value, str):
        return True
    return (
        isinstance(value, dict)
        and isinstance(value.get("url", ""), str)
        and isinstance(value.get("detail", ""), str)
        and set(value) <= {"url", "detail"}
    )


def _chat_request(body: dict, *, flavor: str) -> ChatRequest:
    _parameters_check(body, PARAMETERS[flavor])
    if "user" in body and not isinstance(body["user"], str):
        raise errors.InvalidRequest("'user' must be a string.", param="user")
    _int(body, "top_k", minimum=0)
    _number(body, "repetition_penalty", low=0, high=2)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise errors.InvalidRequest("'model' is required: the id of a model your tier includes.", param="model")
    messages = _messages(body)
    max_tokens = _int(body, "max_completion_tokens", minimum=1)
    if flavor == COMPAT:
        legacy = _int(body, "max_tokens", minimum=1)  # checked even when unused
        max_tokens = legacy if max_tokens is None else max_tokens
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise errors.InvalidRequest("'stream' must be true or false.", param="stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if (
            not isinstance(options, dict)
            or not isinstance(options.get("include_usage", False), bool)
            or (set(options) - {"include_usage"})
        ):
            raise errors.InvalidRequest("'stream_options' must be an object like {\"include_usage\": true}.",
                                        param="stream_options")  # fmt: skip
        include_usage = options.get("include_usage", False)
    _number(body, "top_p", low=0, high=1)
    return ChatRequest(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=include_usage,
        temperature=_number(body, "temperature", low=0, high=2),
        seed=_int(body, "seed", minimum=0),
    )


# --- Response shapes -----------------------------------------------------------------------------------


def _completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def _native_metrics(prompt_tokens: int, completion_tokens: int) -> list[dict]:
    return [
        {"metric": "num_completion_tokens", "value": completion_tokens, "unit": "tokens"},
        {"metric": "num_prompt_tokens", "value": prompt_tokens, "unit": "tokens"},
        {"metric": "num_total_tokens", "value": prompt_tokens + completion_tokens, "unit": "tokens"},
    ]


def _native_body(request_id: str, completion) -> dict:
    return {
        "id": _completion_id(request_id),
        "completion_message": {
            "role": "assistant",
            "content": {"type": "text", "text": completion.text},
            "stop_reason": completion.stop_reason,
        },
        "metrics": _native_metrics(completion.prompt_tokens, completion.completion_tokens),
    }


def _compat_body(request_id: str, model: str, created: int, completion) -> dict:
    return {
        "id": _completion_id(request_id),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text, "refusal": None},
                "finish_reason": completion.stop_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        },
    }


def _sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _native_stream(request_id: str, completion, chunks: Iterator[str]) -> Iterator[bytes]:
    cid = _completion_id(request_id)
    yield _sse({"id": cid, "event": {"event_type": "start", "delta": {"type": "text", "text": ""}}})
    for text in chunks:
        yield _sse({"id": cid, "event": {"event_type": "progress", "delta": {"type": "text", "text": text}}})
    yield _sse(
        {
            "id": cid,
            "event": {
                "event_type": "complete",
                "delta": {"type": "text", "text": ""},
                "stop_reason": completion.stop_reason,
            },
        }
    )
    yield _sse(
        {
            "id": cid,
            "event": {
                "event_type": "metrics",
                "delta": {"type": "text", "text": ""},
                "metrics": _native_metrics(completion.prompt_tokens, completion.completion_tokens),
            },
        }
    )


def _compat_stream(request_id: str, model: str, created: int, completion, chunks: Iterator[str], include_usage: bool):
    base = {"id": _completion_id(request_id), "object": "chat.completion.chunk", "created": created, "model": model}

    def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
        return _sse(
            {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
        )

    yield chunk({"role": "assistant", "content": ""})
    for text in chunks:
        yield chunk({"content": text})
    yield chunk({}, completion.stop_reason)
    if include_usage:
        usage = {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        }
        yield _sse({**base, "choices": [], "usage": usage})
    yield _sse("[DONE]")


# --- Views ---------------------------------------------------------------------------------------------


def _chat(request: HttpRequest, *, flavor: str) -> HttpResponse:
    now = timezone.now()
    caller = metering.caller_authenticate(authorization=request.headers.get("Authorization"), now=now)
    client_request_id = request.headers.get("X-Request-Id")
    request_id = metering.request_id_from_header(client_request_id)
    chat = _chat_request(_body(request), flavor=flavor)
    request_hash = _request_hash(request) if client_request_id else ""
    # The simulated completion is deterministic and cheap (about 0.1 ms), so it is computed before
    # admission; its prompt count is the tokenizer's (no second count of the messages).
    completion = _complete(chat)
    # What a request reserves: its prompt and its maximum completion. The simulated model never writes
    # more than MAX_COMPLETION_TOKENS, so reserving more would only block other requests of the team.
    reserve = completion.prompt_tokens + min(chat.max_tokens or MAX_COMPLETION_TOKENS, MAX_COMPLETION_TOKENS)
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


def _complete(chat: ChatRequest):
    return complete(
        model=chat.model,
        messages=chat.messages,
        max_tokens=chat.max_tokens,
        temperature=chat.temperature,
        seed=chat.seed,
    )


def _stream_response(
    request_id, chat, completion, admission, reserve, created, flavor, headers
) -> StreamingHttpResponse:
    sent = {"tokens": 0, "settled": False}
    pieces = list(iter_chunks(completion))

    def settle(completion_tokens: int) -> bool:
        sent["settled"] = True
        return metering.settle(admission=admission, prompt_tokens=completion.prompt_tokens,
                               completion_tokens=completion_tokens, now=timezone.now())  # fmt: skip

    def counted_chunks() -> Iterator[str]:
        for piece in pieces:
            yield piece
            sent["tokens"] += 1
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
                stream = _native_stream(request_id, completion, counted_chunks())
            else:
                stream = _compat_stream(
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
            yield b"event: error\n" + _sse(exc.body())
        finally:
            # Cut, or the client went away: only what was generated up to that point is counted (a
            # proportional share of the completion's tokens).
            if not sent["settled"]:
                settle(completion.completion_tokens * sent["tokens"] // max(1, len(pieces)))

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
    _parameters_check(body, MODERATION_PARAMETERS)
    messages = _messages(body)
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
    results = moderate([_message_text(m) for m in messages])
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


def _message_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    return " ".join(part.get("text", "") for part in content or [] if part.get("type") == "text")
