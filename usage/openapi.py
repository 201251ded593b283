"""The model API in the OpenAPI schema (/api/schema/): its views are plain Django views (the hot path),
which drf-spectacular cannot read, so their operations are written out here and merged into the
generated schema by config.openapi.

The schemas say what the views accept and refuse, no more and no less: the schema fuzzer in CI
(tests/security/test_schema_fuzz.py) sends requests the schema calls valid and expects them answered
(2xx, or a refusal that is not about the request's shape: 401, 403, 404, 409, 429), and requests it
calls invalid and expects a 4xx. Unknown parameters are refused (a 400 naming them), as the real APIs do.
OpenAPI 3.0, as drf-spectacular writes it: ``nullable`` rather than a "null" type.
"""

from __future__ import annotations

from typing import Any

from core.json_input import MAX_INT
from core.openapi import error_response
from usage.quotas.base import LimitName

NATIVE_TAG = "Model API (Llama)"
COMPAT_TAG = "Model API (OpenAI-compatible)"
SECURITY = [{"ApiKey": []}]
# The largest integer any JSON body may hold (core.json_input refuses larger ones with a 400).
MAX_INTEGER = MAX_INT
# Request objects take no other properties: an unknown parameter is a 400 naming it.
CLOSED = {"additionalProperties": False}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_error = error_response


# The refusals every authenticated operation may answer.
COMMON_ERRORS: dict[str, Any] = {
    "400": _error("The request is malformed: `error.param` names the field."),
    "401": _error("`invalid_api_key`: missing, wrong, expired or revoked key."),
    "403": _error(
        "`insufficient_scope` (the key lacks the `model` scope), `model_not_allowed` (not in your tier) or"
        " `license_required`."
    ),
    "405": _error("`method_not_allowed`: see the `Allow` header."),
    "413": _error("`request_too_large`: the body is over the limit (TIERLAB_MAX_BODY_BYTES, 1 MiB by default)."),
    "429": _error(
        "`rate_limit_exceeded` (a per-minute or per-day window), `insufficient_quota` (monthly quota or spend"
        " cap) or `subscription_inactive`.",
        retry_after=True,
    ),
    "503": _error(
        "`quota_backend_unavailable` or `database_unavailable`: usage cannot be counted right now; nothing was"
        " counted.",
        retry_after=True,
    ),
}

REQUEST_ID = {
    "name": "X-Request-Id",
    "in": "header",
    "required": False,
    "description": (
        "Your id for this request (idempotency). Within 24 hours the same id with the same body is answered"
        " again and counted once; with a different body it is refused with 409 `request_id_reused`. Empty: none."
    ),
    "schema": {"type": "string", "pattern": "^([A-Za-z0-9][A-Za-z0-9._:-]{0,99})?$"},
}

_TEXT_PART = {
    **CLOSED,
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}},
}
_IMAGE_PART = {
    **CLOSED,
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "enum": ["image_url"]},
        "image_url": {
            "nullable": True,
            "oneOf": [
                {"type": "string"},
                {**CLOSED, "type": "object", "properties": {"url": {"type": "string"}, "detail": {"type": "string"}}},
            ],
        },
    },
    "description": "Accepted and counted as text would be; the simulated model does not look at images.",
}
_CONTENT_PARTS = {"oneOf": [_ref("TextPart"), _ref("ImagePart")]}
_CONTENT = {
    "oneOf": [{"type": "string"}, _CONTENT_PARTS, {"type": "array", "items": _CONTENT_PARTS}],
    "description": "A string, one content part, or a list of parts.",
}


def _message(roles: list[str], *, content_required: bool) -> dict[str, Any]:
    content = dict(_CONTENT) if content_required else {**_CONTENT, "nullable": True}
    schema: dict[str, Any] = {
        **CLOSED,
        "type": "object",
        "required": ["role", "content"] if content_required else ["role"],
        "properties": {
            "role": {"type": "string", "enum": roles},
            "content": content,
            "name": {"type": "string"},
            "stop_reason": {"type": "string", "description": "As a Llama API answer carries it."},
            "tool_call_id": {"type": "string"},
            "refusal": {"type": "string", "nullable": True, "description": "As an OpenAI answer carries it."},
        },
    }
    return schema


def _chat_request(*, compat: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "model": {
            "type": "string",
            "minLength": 1,
            "description": "A model id from GET /models.",
            "example": "Llama-3.3-8B-Instruct",
        },
        "messages": {"type": "array", "minItems": 1, "items": _ref("Message")},
        "max_completion_tokens": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_INTEGER,
            "nullable": True,
            "description": "The most completion tokens to write (and to reserve against your limits).",
        },
        "stream": {"type": "boolean", "default": False, "description": "Answer as server-sent events."},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2, "nullable": True},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True},
        "seed": {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER, "nullable": True},
        "user": {"type": "string", "description": "Your end user's id: accepted, no effect."},
    }
    if not compat:
        properties["top_k"] = {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER, "nullable": True}
        properties["repetition_penalty"] = {"type": "number", "minimum": 0, "maximum": 2, "nullable": True}
    if compat:
        properties["max_tokens"] = {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_INTEGER,
            "nullable": True,
            "description": "OpenAI's older name for max_completion_tokens (used when that is absent).",
        }
        properties["stream_options"] = {
            **CLOSED,
            "type": "object",
            "nullable": True,
            "properties": {"include_usage": {"type": "boolean"}},
            "description": "`include_usage: true` adds a last chunk with the token usage.",
        }
    return {**CLOSED, "type": "object", "required": ["model", "messages"], "properties": properties}


_METRIC = {
    "type": "object",
    "required": ["metric", "value", "unit"],
    "properties": {"metric": {"type": "string"}, "value": {"type": "integer"}, "unit": {"type": "string"}},
}
_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        name: {"type": "integer", "minimum": 0} for name in ("prompt_tokens", "completion_tokens", "total_tokens")
    },
}
_STOP_REASON = {"type": "string", "enum": ["stop", "length"]}

SCHEMAS: dict[str, Any] = {
    "ServerSentEvent": {
        "type": "object",
        "required": ["data"],
        "description": "One event of a streamed answer: `data` is a JSON chunk, or `[DONE]` at the end (OpenAI shape).",
        "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}},
    },
    "TextPart": _TEXT_PART,
    "ImagePart": _IMAGE_PART,
    "Message": {
        "oneOf": [
            _message(["system", "user", "tool"], content_required=True),
            _message(["assistant"], content_required=False),
        ],
        "description": "`content` may be null (or absent) only on assistant messages.",
    },
    "LlamaChatRequest": _chat_request(compat=False),
    "OpenAIChatRequest": _chat_request(compat=True),
    "LlamaChatCompletion": {
        "type": "object",
        "required": ["id", "completion_message", "metrics"],
        "properties": {
            "id": {"type": "string"},
            "completion_message": {
                "type": "object",
                "required": ["role", "content", "stop_reason"],
                "properties": {
                    "role": {"type": "string", "enum": ["assistant"]},
                    "content": _TEXT_PART,
                    "stop_reason": _STOP_REASON,
                },
            },
            "metrics": {"type": "array", "items": _METRIC},
        },
    },
    "OpenAIChatCompletion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["chat.completion"]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "message", "finish_reason"],
                    "properties": {
                        "index": {"type": "integer"},
                        "message": {
                            "type": "object",
                            "required": ["role", "content"],
                            "properties": {
                                "role": {"type": "string", "enum": ["assistant"]},
                                "content": {"type": "string", "nullable": True},
                                "refusal": {"type": "string", "nullable": True},
                            },
                        },
                        "finish_reason": _STOP_REASON,
                        "logprobs": {"type": "object", "nullable": True},
                    },
                },
            },
            "usage": _USAGE,
        },
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["model"]},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
        },
    },
    "LlamaModelList": {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "array", "items": _ref("Model")}},
    },
    "OpenAIModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _ref("Model")},
        },
    },
    "ModerationRequest": {
        **CLOSED,
        "type": "object",
        "required": ["messages"],
        "properties": {
            "model": {"type": "string", "nullable": True, "description": "Llama Guard by default."},
            "messages": {"type": "array", "minItems": 1, "items": _ref("Message")},
        },
    },
    "ModerationResponse": {
        "type": "object",
        "required": ["model", "results"],
        "properties": {
            "model": {"type": "string"},
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["flagged", "flagged_categories"],
                    "properties": {
                        "flagged": {"type": "boolean"},
                        "flagged_categories": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
    },
}

_RATE_HEADERS = {
    f"x-ratelimit-{name}": {"description": description, "schema": {"type": "string"}}
    for name, description in (
        ("limit-requests", "Requests allowed in the tightest request window."),
        ("remaining-requests", "Requests left in it."),
        ("limit-tokens", "Tokens allowed in the tightest token window."),
        ("remaining-tokens", "Tokens left in it."),
    )
}


def _chat_operation(*, compat: bool) -> dict[str, Any]:
    flavor = "OpenAI" if compat else "Llama"
    return {
        "post": {
            "operationId": f"{'compat' if compat else 'llama'}_chat_completions_create",
            "summary": "Create a chat completion" + (" (OpenAI shape)" if compat else ""),
            "description": (
                f"Admitted against every limit of your tier at once, reserving the prompt plus `max_completion_tokens`;"
                f" counted once per request (see `X-Request-Id`). The {flavor} SDK works unchanged."
                f" Limits: {', '.join(limit.value for limit in LimitName)}."
            ),
            "tags": [COMPAT_TAG if compat else NATIVE_TAG],
            "security": SECURITY,
            "parameters": [REQUEST_ID],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref(f"{flavor}ChatRequest")}},
            },
            "responses": {
                "200": {
                    "description": "The completion, or with `stream: true` a stream of server-sent events.",
                    "headers": _RATE_HEADERS,
                    "content": {
                        "application/json": {"schema": _ref(f"{flavor}ChatCompletion")},
                        "text/event-stream": {"schema": _ref("ServerSentEvent")},
                    },
                },
                **COMMON_ERRORS,
                "404": _error("`model_not_found`: no such model."),
                "409": _error(
                    "`request_id_reused` (this `X-Request-Id` was used for a different request) or"
                    " `request_id_in_progress` (the first request with it has not finished: retry shortly)."
                ),
            },
        }
    }


def _models_operations(*, compat: bool) -> dict[str, dict[str, Any]]:
    prefix = "compat" if compat else "llama"
    tag = COMPAT_TAG if compat else NATIVE_TAG
    errors = {code: COMMON_ERRORS[code] for code in ("401", "403", "405", "503")}
    return {
        "list": {
            "get": {
                "operationId": f"{prefix}_models_list",
                "summary": "List the models your tier includes",
                "tags": [tag],
                "security": SECURITY,
                "responses": {
                    "200": {
                        "description": "The models.",
                        "content": {
                            "application/json": {"schema": _ref("OpenAIModelList" if compat else "LlamaModelList")}
                        },
                    },
                    **errors,
                },
            }
        },
        "detail": {
            "get": {
                "operationId": f"{prefix}_models_retrieve",
                "summary": "One model",
                "tags": [tag],
                "security": SECURITY,
                "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "The model.", "content": {"application/json": {"schema": _ref("Model")}}},
                    **errors,
                    "404": _error("`model_not_found`: no such model."),
                },
            }
        },
    }


def _moderations_operation() -> dict[str, Any]:
    return {
        "post": {
            "operationId": "llama_moderations_create",
            "summary": "Classify messages with the simulated Llama Guard",
            "description": "Free: it counts against the per-minute and per-day request windows, never tokens.",
            "tags": [NATIVE_TAG],
            "security": SECURITY,
            "parameters": [REQUEST_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ModerationRequest")}}},
            "responses": {
                "200": {
                    "description": "One result per message.",
                    "content": {"application/json": {"schema": _ref("ModerationResponse")}},
                },
                **COMMON_ERRORS,
                "404": _error("`model_not_found`: not a moderation model."),
                "409": _error(
                    "`request_id_reused` (this `X-Request-Id` was used for a different request) or"
                    " `request_id_in_progress` (the first request with it has not finished: retry shortly)."
                ),
            },
        }
    }


def openapi_fragment() -> dict[str, Any]:
    """{"paths": ..., "components": {"schemas": ...}, "tags": ...} for the model API under /v1 and /compat/v1."""
    native_models = _models_operations(compat=False)
    compat_models = _models_operations(compat=True)
    return {
        "paths": {
            "/v1/chat/completions": _chat_operation(compat=False),
            "/v1/models": native_models["list"],
            "/v1/models/{model_id}": native_models["detail"],
            "/v1/moderations": _moderations_operation(),
            "/compat/v1/chat/completions": _chat_operation(compat=True),
            "/compat/v1/models": compat_models["list"],
            "/compat/v1/models/{model_id}": compat_models["detail"],
        },
        "components": {"schemas": SCHEMAS},
        "tags": [
            {"name": NATIVE_TAG, "description": "The Llama API's shape: `llama_api_client` with base_url .../v1."},
            {"name": COMPAT_TAG, "description": "OpenAI's shape: `openai.OpenAI` with base_url .../compat/v1."},
        ],
    }
