"""The response shapes of a chat completion (a usage.chat_completion.ChatResult): the native Llama body
and its server-sent events (``completion_message`` with ``tool_calls``, ``metrics``; ``start``/
``progress``/``complete``/``metrics`` events, tool calls as ``tool_call`` deltas) and the
OpenAI-compatible body and chunks (``choices`` with ``tool_calls`` and ``logprobs``, ``usage``,
``data: [DONE]``), as llama-api-client's and openai's types define them.

A stream is a list of :class:`Piece` (:func:`stream_pieces`): a few tokens of one choice's text, the
start of a tool call (its id and name) or a part of its arguments, each with the completion tokens it
carries, so a stream cut short is counted for what was sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from usage.tokenizer import count_tokens, tokenize

CHUNK_TOKENS = 4


@dataclass(frozen=True)
class Piece:
    choice: int
    kind: str  # "text", "call" (a tool call starts: id and name) or "arguments"
    text: str = ""
    tokens: int = 0
    call: int = 0  # the tool call's index within its choice
    call_id: str = ""
    name: str = ""
    logprobs: list[dict] | None = None


def stream_pieces(result) -> list[Piece]:
    """The result's choices as pieces, choice by choice, in order."""
    pieces: list[Piece] = []
    for choice in result.choices:
        for start in range(0, len(choice.tokens), CHUNK_TOKENS):
            part = choice.tokens[start : start + CHUNK_TOKENS]
            logprobs = choice.logprobs[start : start + CHUNK_TOKENS] if choice.logprobs is not None else None
            pieces.append(Piece(choice.index, "text", "".join(part), len(part), logprobs=logprobs))
        for number, call in enumerate(choice.tool_calls):
            pieces.append(Piece(choice.index, "call", tokens=count_tokens(call.name), call=number,
                                call_id=call.id, name=call.name))  # fmt: skip
            argument_tokens = tokenize(call.arguments)
            for start in range(0, len(argument_tokens), CHUNK_TOKENS * 4):
                part = argument_tokens[start : start + CHUNK_TOKENS * 4]
                pieces.append(Piece(choice.index, "arguments", "".join(part), len(part), call=number))
    return pieces


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def native_metrics(prompt_tokens: int, completion_tokens: int) -> list[dict]:
    return [
        {"metric": "num_completion_tokens", "value": completion_tokens, "unit": "tokens"},
        {"metric": "num_prompt_tokens", "value": prompt_tokens, "unit": "tokens"},
        {"metric": "num_total_tokens", "value": prompt_tokens + completion_tokens, "unit": "tokens"},
    ]


def _calls(choice, *, typed: bool) -> list[dict]:
    return [
        {"id": c.id, **({"type": "function"} if typed else {}), "function": {"name": c.name, "arguments": c.arguments}}
        for c in choice.tool_calls
    ]


def native_body(request_id: str, result) -> dict:
    """The Llama API's body (one choice: the native shape has no ``n``)."""
    choice = result.choices[0]
    message: dict = {
        "role": "assistant",
        "content": {"type": "text", "text": choice.text or ""},
        "stop_reason": choice.stop_reason,
    }
    if choice.tool_calls:
        message["tool_calls"] = _calls(choice, typed=False)
    return {
        "id": completion_id(request_id),
        "completion_message": message,
        "metrics": native_metrics(result.prompt_tokens, result.completion_tokens),
    }


def _usage(result) -> dict:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def compat_body(request_id: str, model: str, created: int, result) -> dict:
    choices = []
    for choice in result.choices:
        message: dict = {"role": "assistant", "content": choice.text, "refusal": None}
        if choice.tool_calls:
            message["tool_calls"] = _calls(choice, typed=True)
        choices.append(
            {
                "index": choice.index,
                "message": message,
                "finish_reason": choice.stop_reason,
                "logprobs": None if choice.logprobs is None else {"content": choice.logprobs, "refusal": None},
            }
        )
    return {
        "id": completion_id(request_id),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": _usage(result),
    }


def sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def native_stream(request_id: str, result, pieces: Iterator[Piece]) -> Iterator[bytes]:
    cid = completion_id(request_id)
    yield sse({"id": cid, "event": {"event_type": "start", "delta": {"type": "text", "text": ""}}})
    for piece in pieces:
        if piece.kind == "text":
            delta: dict = {"type": "text", "text": piece.text}
        elif piece.kind == "call":
            delta = {"type": "tool_call", "id": piece.call_id, "function": {"name": piece.name, "arguments": ""}}
        else:
            delta = {"type": "tool_call", "function": {"arguments": piece.text}}
        yield sse({"id": cid, "event": {"event_type": "progress", "delta": delta}})
    complete = {"event_type": "complete", "delta": {"type": "text", "text": ""}, "stop_reason": result.stop_reason}
    yield sse({"id": cid, "event": complete})
    metrics = native_metrics(result.prompt_tokens, result.completion_tokens)
    event = {"event_type": "metrics", "delta": {"type": "text", "text": ""}, "metrics": metrics}
    yield sse({"id": cid, "event": event})


def compat_stream(request_id: str, model: str, created: int, result, pieces: Iterator[Piece], include_usage: bool):
    base = {"id": completion_id(request_id), "object": "chat.completion.chunk", "created": created, "model": model}

    def chunk(index: int, delta: dict, finish_reason: str | None = None, logprobs: dict | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}
        return sse({**base, "choices": [choice]})

    for choice in result.choices:
        yield chunk(choice.index, {"role": "assistant", "content": "" if choice.text is not None else None})
    for piece in pieces:
        if piece.kind == "text":
            logprobs = None if piece.logprobs is None else {"content": piece.logprobs, "refusal": None}
            yield chunk(piece.choice, {"content": piece.text}, logprobs=logprobs)
        elif piece.kind == "call":
            call = {"index": piece.call, "id": piece.call_id, "type": "function",
                    "function": {"name": piece.name, "arguments": ""}}  # fmt: skip
            yield chunk(piece.choice, {"tool_calls": [call]})
        else:
            yield chunk(piece.choice, {"tool_calls": [{"index": piece.call, "function": {"arguments": piece.text}}]})
    for choice in result.choices:
        yield chunk(choice.index, {}, choice.stop_reason)
    if include_usage:
        yield sse({**base, "choices": [], "usage": _usage(result)})
    yield sse("[DONE]")
