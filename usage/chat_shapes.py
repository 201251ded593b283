"""The response shapes of a chat completion: the native Llama body and its server-sent events
(``completion_message``, ``metrics``; ``start``/``progress``/``complete``/``metrics`` events) and the
OpenAI-compatible body and chunks (``choices``, ``usage``, ``data: [DONE]``)."""

from __future__ import annotations

import json
from collections.abc import Iterator


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def native_metrics(prompt_tokens: int, completion_tokens: int) -> list[dict]:
    return [
        {"metric": "num_completion_tokens", "value": completion_tokens, "unit": "tokens"},
        {"metric": "num_prompt_tokens", "value": prompt_tokens, "unit": "tokens"},
        {"metric": "num_total_tokens", "value": prompt_tokens + completion_tokens, "unit": "tokens"},
    ]


def native_body(request_id: str, completion) -> dict:
    return {
        "id": completion_id(request_id),
        "completion_message": {
            "role": "assistant",
            "content": {"type": "text", "text": completion.text},
            "stop_reason": completion.stop_reason,
        },
        "metrics": native_metrics(completion.prompt_tokens, completion.completion_tokens),
    }


def compat_body(request_id: str, model: str, created: int, completion) -> dict:
    return {
        "id": completion_id(request_id),
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


def sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def native_stream(request_id: str, completion, chunks: Iterator[str]) -> Iterator[bytes]:
    cid = completion_id(request_id)
    yield sse({"id": cid, "event": {"event_type": "start", "delta": {"type": "text", "text": ""}}})
    for text in chunks:
        yield sse({"id": cid, "event": {"event_type": "progress", "delta": {"type": "text", "text": text}}})
    yield sse(
        {
            "id": cid,
            "event": {
                "event_type": "complete",
                "delta": {"type": "text", "text": ""},
                "stop_reason": completion.stop_reason,
            },
        }
    )
    yield sse(
        {
            "id": cid,
            "event": {
                "event_type": "metrics",
                "delta": {"type": "text", "text": ""},
                "metrics": native_metrics(completion.prompt_tokens, completion.completion_tokens),
            },
        }
    )


def compat_stream(request_id: str, model: str, created: int, completion, chunks: Iterator[str], include_usage: bool):
    base = {"id": completion_id(request_id), "object": "chat.completion.chunk", "created": created, "model": model}

    def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
        return sse(
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
        yield sse({**base, "choices": [], "usage": usage})
    yield sse("[DONE]")
