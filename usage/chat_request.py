"""Parsing and validating a chat request of the model API (both shapes) into a :class:`ChatRequest`.

Every refusal is a 400 in the model API's error shape naming the parameter (``error.param``), as the
Llama and OpenAI APIs answer; unknown parameters are refused (:data:`PARAMETERS`), never ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest

from core.json_input import JsonInputError, json_loads_bounded
from usage import errors
from usage.structured import ResponseFormat, response_format_parse
from usage.tools import Tool, ToolChoice, tool_calls_parse, tool_choice_parse, tools_parse

NATIVE = "llama"
COMPAT = "openai"
ROLES = {"system", "user", "assistant", "tool"}
# What a message may carry, as the Llama and OpenAI APIs define it (an assistant message from a response
# can be sent back as it is); anything else is a 400 naming it, as both APIs do. The simulated model
# reads role, content, the assistant's tool calls and the tool results (usage/tools.py).
# Field -> (types allowed, what the 400 says).
MESSAGE_STRINGS = {"name": (str,), "stop_reason": (str,), "tool_call_id": (str,), "refusal": (str, type(None))}
MESSAGE_FIELDS = frozenset({"role", "content", "tool_calls", *MESSAGE_STRINGS})
MAX_CHOICES = 8  # n: more would only multiply the reservation
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_TOP_LOGPROBS = 20
PART_FIELDS = {"text": frozenset({"type", "text"}), "image_url": frozenset({"type", "image_url"})}


def unknown_field(obj: dict, allowed: frozenset, where: str) -> None:
    for name in obj:
        if name not in allowed:
            param = f"{where}.{name}"
            raise errors.InvalidRequest(f"Unknown parameter '{param}'.", param=param)


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict]
    max_tokens: int | None
    stream: bool
    include_usage: bool
    temperature: float | None
    seed: int | None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=lambda: ToolChoice("none"))
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0


def body_parse(request: HttpRequest) -> dict:
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


def messages_parse(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise errors.InvalidRequest("'messages' must be a non-empty list of messages.", param="messages")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise errors.InvalidRequest(f"'{where}' must be an object with 'role' and 'content'.", param=where)
        unknown_field(message, MESSAGE_FIELDS, where)
        for name, types in MESSAGE_STRINGS.items():
            if name in message and not isinstance(message[name], types):
                param = f"{where}.{name}"
                raise errors.InvalidRequest(f"'{param}' must be a string.", param=param)
        if not isinstance(message.get("role"), str) or message["role"] not in ROLES:
            raise errors.InvalidRequest(
                f"'{where}.role' must be one of {', '.join(sorted(ROLES))}.", param=f"{where}.role"
            )
        if "tool_calls" in message:
            if message["role"] != "assistant":
                param = f"{where}.tool_calls"
                raise errors.InvalidRequest(f"'{param}' belongs on assistant messages only.", param=param)
            tool_calls_parse(message["tool_calls"], f"{where}.tool_calls")
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
            unknown_field(part, PART_FIELDS[part["type"]], f"{where}.content[{part_index}]")
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
# ``n``, ``stop``, ``logprobs`` and the penalties are OpenAI's only: the Llama API refuses them too.
_COMMON_PARAMETERS = {
    "model", "messages", "max_completion_tokens", "stream", "temperature", "top_p", "seed", "user", "tools",
    "tool_choice", "response_format",
}  # fmt: skip
_OPENAI_ONLY = {
    "max_tokens", "stream_options", "n", "stop", "logprobs", "top_logprobs", "presence_penalty",
    "frequency_penalty", "parallel_tool_calls",
}  # fmt: skip
PARAMETERS = {
    NATIVE: frozenset({*_COMMON_PARAMETERS, "top_k", "repetition_penalty"}),
    COMPAT: frozenset({*_COMMON_PARAMETERS, *_OPENAI_ONLY}),
}
MODERATION_PARAMETERS = frozenset({"model", "messages"})


def parameters_check(body: dict, allowed: frozenset) -> None:
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


def chat_request_parse(body: dict, *, flavor: str) -> ChatRequest:
    parameters_check(body, PARAMETERS[flavor])
    if "user" in body and not isinstance(body["user"], str):
        raise errors.InvalidRequest("'user' must be a string.", param="user")
    _int(body, "top_k", minimum=0)
    _number(body, "repetition_penalty", low=0, high=2)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise errors.InvalidRequest("'model' is required: the id of a model your tier includes.", param="model")
    messages = messages_parse(body)
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
    _number(body, "presence_penalty", low=-2, high=2)
    _number(body, "frequency_penalty", low=-2, high=2)
    tools = tools_parse(body.get("tools"))
    n = _int(body, "n", minimum=1) or 1
    if n > MAX_CHOICES:
        raise errors.InvalidRequest(f"'n' must be an integer from 1 to {MAX_CHOICES}.", param="n")
    return ChatRequest(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=include_usage,
        temperature=_number(body, "temperature", low=0, high=2),
        seed=_int(body, "seed", minimum=0),
        tools=tools,
        tool_choice=tool_choice_parse(body.get("tool_choice"), tools),
        parallel_tool_calls=_bool(body, "parallel_tool_calls", default=True),
        response_format=response_format_parse(body.get("response_format")),
        n=n,
        stop=_stop(body.get("stop")),
        logprobs=_bool(body, "logprobs", default=False),
        top_logprobs=_top_logprobs(body),
    )


def _bool(body: dict, name: str, *, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise errors.InvalidRequest(f"'{name}' must be true or false.", param=name)
    return value


def _stop(value: Any) -> tuple[str, ...]:
    """``stop``: one string or a list of up to MAX_STOP_SEQUENCES non-empty strings."""
    if value is None:
        return ()
    sequences = [value] if isinstance(value, str) else value
    if (
        not isinstance(sequences, list)
        or len(sequences) > MAX_STOP_SEQUENCES
        or not all(isinstance(s, str) and s for s in sequences)
    ):
        raise errors.InvalidRequest(
            f"'stop' must be a non-empty string or a list of up to {MAX_STOP_SEQUENCES} of them.", param="stop"
        )
    return tuple(sequences)


def _top_logprobs(body: dict) -> int:
    top = _int(body, "top_logprobs", minimum=0)
    if top is None:
        return 0
    if top > MAX_TOP_LOGPROBS:
        raise errors.InvalidRequest(f"'top_logprobs' must be an integer from 0 to {MAX_TOP_LOGPROBS}.",
                                    param="top_logprobs")  # fmt: skip
    if body.get("logprobs") is not True:
        raise errors.InvalidRequest("'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
    return top


def message_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    return " ".join(part.get("text", "") for part in content or [] if part.get("type") == "text")
