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
from usage.moderation import MAX_MODERATION_INPUTS, OPENAI_CATEGORIES
from usage.openapi_chat import CHAT_SCHEMAS, CLOSED
from usage.quotas.base import LimitName

NATIVE_TAG = "Model API (Llama)"
COMPAT_TAG = "Model API (OpenAI-compatible)"
SECURITY = [{"ApiKey": []}]
# The largest integer any JSON body may hold (core.json_input refuses larger ones with a 400).
MAX_INTEGER = MAX_INT
# Request objects take no other properties (CLOSED): an unknown parameter is a 400 naming it.


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


def _per_category(value: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(OPENAI_CATEGORIES),
        "properties": dict.fromkeys(OPENAI_CATEGORIES, value),
    }


SCHEMAS: dict[str, Any] = {
    **CHAT_SCHEMAS,
    "ServerSentEvent": {
        "type": "object",
        "required": ["data"],
        "description": "One event of a streamed answer: `data` is a JSON chunk, or `[DONE]` at the end (OpenAI shape).",
        "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}},
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
    "OpenAIModerationRequest": {
        **CLOSED,
        "type": "object",
        "required": ["input"],
        "properties": {
            "model": {
                "type": "string",
                "description": "omni-moderation-latest (default), omni-moderation-2024-09-26, text-moderation-latest,"
                " text-moderation-stable, or the Llama Guard id: all the same simulated Llama Guard.",
            },
            "input": {
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "minItems": 1, "maxItems": MAX_MODERATION_INPUTS, "items": {"type": "string"}},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_MODERATION_INPUTS,
                        "items": {"oneOf": [_ref("TextPart"), _ref("ModerationImagePart")]},
                    },
                ],
                "description": "A text, a list of texts (one result each) or a list of parts (one result).",
            },
        },
    },
    "ModerationImagePart": {
        **CLOSED,
        "type": "object",
        "required": ["type", "image_url"],
        "properties": {
            "type": {"type": "string", "enum": ["image_url"]},
            "image_url": {**CLOSED, "type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}},
        },
    },
    "OpenAIModerationResponse": {
        "type": "object",
        "required": ["id", "model", "results"],
        "properties": {
            "id": {"type": "string"},
            "model": {"type": "string"},
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["flagged", "categories", "category_scores", "category_applied_input_types"],
                    "properties": {
                        "flagged": {"type": "boolean"},
                        "categories": _per_category({"type": "boolean"}),
                        "category_scores": _per_category({"type": "number", "minimum": 0, "maximum": 1}),
                        "category_applied_input_types": _per_category(
                            {"type": "array", "items": {"type": "string", "enum": ["text", "image"]}}
                        ),
                    },
                },
            },
        },
        "description": "Llama Guard's categories map to OpenAI's as usage/moderation.py OPENAI_CATEGORIES says.",
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


def _moderations_operation(*, compat: bool = False) -> dict[str, Any]:
    prefix = "OpenAI" if compat else ""
    return {
        "post": {
            "operationId": f"{'compat' if compat else 'llama'}_moderations_create",
            "summary": "Classify "
            + ("texts" if compat else "messages")
            + " with the simulated Llama Guard"
            + (" (OpenAI shape)" if compat else ""),
            "description": "Free: it counts against the per-minute and per-day request windows, never tokens.",
            "tags": [COMPAT_TAG if compat else NATIVE_TAG],
            "security": SECURITY,
            "parameters": [REQUEST_ID],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref(f"{prefix}ModerationRequest")}},
            },
            "responses": {
                "200": {
                    "description": "One result per message." if not compat else "One result per text.",
                    "content": {"application/json": {"schema": _ref(f"{prefix}ModerationResponse")}},
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
            "/compat/v1/moderations": _moderations_operation(compat=True),
        },
        "components": {"schemas": SCHEMAS},
        "tags": [
            {"name": NATIVE_TAG, "description": "The Llama API's shape: `llama_api_client` with base_url .../v1."},
            {"name": COMPAT_TAG, "description": "OpenAI's shape: `openai.OpenAI` with base_url .../compat/v1."},
        ],
    }
