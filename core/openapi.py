"""The JSON error shape in the OpenAPI schema, for the hand-written parts of /api/schema/ (the plain
Django views of the model API and the partner ingest) and the account API's refusals, which
drf-spectacular does not infer (config.openapi adds them)."""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA_NAME = "Error"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "description": "Every TierLab API's error shape (core.errors.error_body).",
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code", "param"],
            "properties": {
                "message": {"type": "string", "description": "For people."},
                "type": {"type": "string", "description": "The class of error, as the OpenAI and Llama APIs name it."},
                "code": {"type": "string", "description": "Stable and machine-readable."},
                "param": {"type": "string", "nullable": True, "description": "The field at fault, if any."},
            },
        }
    },
}


def error_response(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    """An OpenAPI response object answering the error shape; ``retry_after`` documents the header."""
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA_NAME}"}}},
    }
    if retry_after:
        response["headers"] = {
            "Retry-After": {"description": "Seconds until a retry can succeed.", "schema": {"type": "integer"}}
        }
    return response
