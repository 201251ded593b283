"""The chat-completion schemas of the model API's OpenAPI document (usage/openapi.py assembles them):
the request of each shape (with tools, tool_choice, response_format and, OpenAI's only, n, stop,
logprobs, the penalties), messages carrying tool calls and tool results, and the responses with tool
calls and log probabilities. Closed objects, as the views refuse unknown fields; ``nullable`` where
the views take null for absent."""

from __future__ import annotations

from typing import Any

from core.json_input import MAX_INT
from usage.chat_request import MAX_CHOICES, MAX_STOP_SEQUENCES, MAX_TOP_LOGPROBS

CLOSED = {"additionalProperties": False}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


TEXT_PART = {
    **CLOSED,
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}},
}
IMAGE_PART = {
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
_CONTENT_PARTS = {"oneOf": [ref("TextPart"), ref("ImagePart")]}
_CONTENT = {
    "oneOf": [{"type": "string"}, _CONTENT_PARTS, {"type": "array", "items": _CONTENT_PARTS}],
    "description": "A string, one content part, or a list of parts.",
}
_FUNCTION_CALL = {
    **CLOSED,
    "type": "object",
    "required": ["name", "arguments"],
    "properties": {
        "name": {"type": "string"},
        "arguments": {"type": "string", "description": "The arguments as JSON text."},
    },
}
TOOL_CALL = {
    **CLOSED,
    "type": "object",
    "required": ["id", "function"],
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string", "enum": ["function"], "description": "OpenAI shape only."},
        "function": _FUNCTION_CALL,
    },
}


def _message(roles: list[str], *, content_required: bool) -> dict[str, Any]:
    content = dict(_CONTENT) if content_required else {**_CONTENT, "nullable": True}
    properties: dict[str, Any] = {
        "role": {"type": "string", "enum": roles},
        "content": content,
        "name": {"type": "string"},
        "stop_reason": {"type": "string", "description": "As a Llama API answer carries it."},
        "tool_call_id": {"type": "string", "description": "On a tool message: the call it answers."},
        "refusal": {"type": "string", "nullable": True, "description": "As an OpenAI answer carries it."},
    }
    if "assistant" in roles:
        properties["tool_calls"] = {"type": "array", "items": ref("ToolCall"), "description": "The calls it made."}
    return {
        **CLOSED,
        "type": "object",
        "required": ["role", "content"] if content_required else ["role"],
        "properties": properties,
    }


_JSON_SCHEMA_OBJECT = {
    "type": "object",
    "description": (
        "A JSON Schema (draft 2020-12) in the supported subset: type, properties, required, additionalProperties,"
        " items, enum, const, anyOf, $ref/$defs, minimum/maximum (and exclusive), multipleOf, minLength/maxLength,"
        " format (date, date-time, time, email, uri, uuid), minItems/maxItems/uniqueItems, and annotations. Any"
        " other keyword is a 400 naming it; a schema that cannot be satisfied is a 400 too."
    ),
}
TOOL = {
    **CLOSED,
    "type": "object",
    "required": ["type", "function"],
    "properties": {
        "type": {"type": "string", "enum": ["function"]},
        "function": {
            **CLOSED,
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$", "description": "Unique in `tools`."},
                "description": {"type": "string", "description": "Its keywords can make the model call it."},
                "parameters": {**_JSON_SCHEMA_OBJECT, "nullable": True},
                "strict": {"type": "boolean", "nullable": True, "description": "Arguments always follow the schema."},
            },
        },
    },
}
_TOOL_CHOICE = {
    "nullable": True,
    "oneOf": [
        {"type": "string", "enum": ["none", "auto", "required"]},
        {
            **CLOSED,
            "type": "object",
            "required": ["type", "function"],
            "properties": {
                "type": {"type": "string", "enum": ["function"]},
                "function": {
                    **CLOSED,
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}},
                },
            },
        },
    ],
    "description": (
        "`none`; `auto` (default with tools): the tools named in the last user message (their name or a keyword of"
        " their description) are called; `required`: those, or else the first tool; a named function: that one."
        " A named function must be in `tools`."
    ),
}
_RESPONSE_FORMAT = {
    "nullable": True,
    "oneOf": [
        {
            **CLOSED,
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"type": "string", "enum": ["text"]}},
        },
        {
            **CLOSED,
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"type": "string", "enum": ["json_object"]}},
        },
        {
            **CLOSED,
            "type": "object",
            "required": ["type", "json_schema"],
            "properties": {
                "type": {"type": "string", "enum": ["json_schema"]},
                "json_schema": {
                    **CLOSED,
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "description": {"type": "string"},
                        "schema": {**_JSON_SCHEMA_OBJECT, "nullable": True},
                        "strict": {"type": "boolean", "nullable": True},
                    },
                },
            },
        },
    ],
    "description": "`json_schema`: the answer is JSON valid against the schema; `json_object`: a JSON object.",
}


def _integer(low: int, high: int = MAX_INT, description: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": low, "maximum": high, "nullable": True}
    return {**schema, "description": description} if description else schema


def chat_request(*, compat: bool) -> dict[str, Any]:
    no_effect = "Accepted; no effect on the simulated model."
    properties: dict[str, Any] = {
        "model": {
            "type": "string",
            "minLength": 1,
            "description": "A model id from GET /models.",
            "example": "Llama-3.3-8B-Instruct",
        },
        "messages": {"type": "array", "minItems": 1, "items": ref("Message")},
        "max_completion_tokens": _integer(
            1, description="The most completion tokens per choice (at most 512 are written; reserved against limits)."
        ),
        "stream": {"type": "boolean", "default": False, "description": "Answer as server-sent events."},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2, "nullable": True, "description": no_effect},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True, "description": no_effect},
        "seed": _integer(0, description="Part of what seeds the simulated answer: another seed, another answer."),
        "user": {"type": "string", "description": "Your end user's id: accepted, no effect."},
        "tools": {"type": "array", "items": ref("Tool"), "nullable": True},
        "tool_choice": _TOOL_CHOICE,
        "response_format": _RESPONSE_FORMAT,
    }
    if not compat:
        properties["top_k"] = {**_integer(0), "description": no_effect}
        properties["repetition_penalty"] = {
            "type": "number", "minimum": 0, "maximum": 2, "nullable": True, "description": no_effect,
        }  # fmt: skip
    if compat:
        properties["max_tokens"] = _integer(1, description="OpenAI's older name for max_completion_tokens.")
        properties["stream_options"] = {
            **CLOSED,
            "type": "object",
            "nullable": True,
            "properties": {"include_usage": {"type": "boolean"}},
            "description": "`include_usage: true` adds a last chunk with the token usage.",
        }
        properties["n"] = _integer(1, MAX_CHOICES, "Choices to write; each is counted and reserved.")
        stop_string = {"type": "string", "minLength": 1}
        properties["stop"] = {
            "nullable": True,
            "oneOf": [stop_string, {"type": "array", "items": stop_string, "maxItems": MAX_STOP_SEQUENCES}],
            "description": "The text is cut before the first of these (not included); finish_reason `stop`.",
        }
        properties["logprobs"] = {"type": "boolean", "nullable": True, "description": "Simulated, per token."}
        properties["top_logprobs"] = _integer(0, MAX_TOP_LOGPROBS, "Alternatives per token; needs `logprobs`.")
        for name in ("presence_penalty", "frequency_penalty"):
            properties[name] = {"type": "number", "minimum": -2, "maximum": 2, "nullable": True}
            properties[name]["description"] = no_effect
        properties["parallel_tool_calls"] = {
            "type": "boolean",
            "nullable": True,
            "description": "false: at most one tool call per choice.",
        }
    return {**CLOSED, "type": "object", "required": ["model", "messages"], "properties": properties}


_STOP_REASON = {"type": "string", "enum": ["stop", "length", "tool_calls"]}
_TOKEN_LOGPROB = {
    "type": "object",
    "required": ["token", "logprob", "bytes"],
    "properties": {
        "token": {"type": "string"},
        "logprob": {"type": "number", "maximum": 0},
        "bytes": {"type": "array", "items": {"type": "integer"}, "nullable": True},
    },
}
_METRIC = {
    "type": "object",
    "required": ["metric", "value", "unit"],
    "properties": {"metric": {"type": "string"}, "value": {"type": "integer"}, "unit": {"type": "string"}},
}
USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        name: {"type": "integer", "minimum": 0} for name in ("prompt_tokens", "completion_tokens", "total_tokens")
    },
    "description": "Every choice and tool call counts in completion_tokens; tool and schema definitions in the prompt.",
}

CHAT_SCHEMAS: dict[str, Any] = {
    "TextPart": TEXT_PART,
    "ImagePart": IMAGE_PART,
    "ToolCall": TOOL_CALL,
    "Tool": TOOL,
    "Message": {
        "oneOf": [
            _message(["system", "user", "tool"], content_required=True),
            _message(["assistant"], content_required=False),
        ],
        "description": "`content` may be null (or absent) only on assistant messages.",
    },
    "LlamaChatRequest": chat_request(compat=False),
    "OpenAIChatRequest": chat_request(compat=True),
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
                    "content": TEXT_PART,
                    "stop_reason": _STOP_REASON,
                    "tool_calls": {"type": "array", "items": ref("ToolCall")},
                },
            },
            "metrics": {"type": "array", "items": _METRIC},
        },
        "description": (
            "Streamed: `start`, `progress` (a `text` delta, or a `tool_call` delta: first with `id` and"
            " `function.name`, then `function.arguments` pieces), `complete` (with `stop_reason`), `metrics`."
        ),
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
                                "tool_calls": {"type": "array", "items": ref("ToolCall")},
                            },
                        },
                        "finish_reason": _STOP_REASON,
                        "logprobs": {
                            "type": "object",
                            "nullable": True,
                            "properties": {
                                "content": {
                                    "type": "array",
                                    "items": {
                                        **_TOKEN_LOGPROB,
                                        "properties": {
                                            **_TOKEN_LOGPROB["properties"],
                                            "top_logprobs": {"type": "array", "items": _TOKEN_LOGPROB},
                                        },
                                    },
                                },
                                "refusal": {"nullable": True},
                            },
                        },
                    },
                },
            },
            "usage": USAGE,
        },
        "description": (
            "Streamed: `chat.completion.chunk` objects, per choice `delta.role`, then `delta.content` pieces (with"
            " `logprobs`) or `delta.tool_calls` pieces (`index`, first `id`/`type`/`function.name`, then"
            " `function.arguments`), then `finish_reason`; with `stream_options.include_usage` a last chunk with"
            " `usage` and no choices; then `[DONE]`."
        ),
    },
}
