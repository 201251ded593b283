"""One OpenAPI schema for every JSON API (/api/schema/): drf-spectacular reads the DRF views (the
account API, MAU reports and licences); this hook adds what it cannot read — the model API and the
partner ingest, plain Django views documented in usage.openapi and partners.openapi — and the
refusals every operation may answer in the shared error shape (core.openapi), which drf-spectacular
does not infer. The schema fuzzer (tests/security/test_schema_fuzz.py) holds the server to it."""

from __future__ import annotations

from typing import Any

from core.openapi import ERROR_SCHEMA, ERROR_SCHEMA_NAME, error_response
from partners.openapi import openapi_fragment as partner_fragment
from usage.openapi import openapi_fragment as model_api_fragment

WRITE_METHODS = {"post", "put", "patch"}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

# What any operation may answer besides its own responses, and when.
DEFAULT_REFUSALS = {
    "401": error_response("Not signed in, or a missing, wrong, expired or revoked API key."),
    "403": error_response("`insufficient_scope`: the key lacks the scope this needs; or not allowed for your role."),
    "405": error_response("`method_not_allowed`: see the `Allow` header."),
    "429": error_response("`throttled`: too many account API requests from this key or team.", retry_after=True),
}
INPUT_REFUSALS = {
    "400": error_response("The request is malformed: `error.param` names the field."),
    "413": error_response("`request_too_large`: the body is over TIERLAB_MAX_BODY_BYTES (1 MiB by default)."),
}
NOT_FOUND = {"404": error_response("`not_found`: no such object in your team.")}


def _merge(schema: dict[str, Any], fragment: dict[str, Any]) -> None:
    schema.setdefault("paths", {}).update(fragment["paths"])
    components = schema.setdefault("components", {})
    for section, entries in fragment.get("components", {}).items():
        components.setdefault(section, {}).update(entries)
    schema.setdefault("tags", []).extend(fragment.get("tags", []))


def _refusals_add(path: str, method: str, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    wanted = dict(DEFAULT_REFUSALS)
    takes_input = method in WRITE_METHODS or any(p.get("in") == "query" for p in operation.get("parameters", []))
    if takes_input:
        wanted.update(INPUT_REFUSALS)
    parameters = {p.get("name") for p in operation.get("parameters", []) if p.get("in") == "query"}
    if "{" in path or "page" in parameters:  # DRF's pagination answers 404 for a page past the end
        wanted.update(NOT_FOUND)
    for status, response in wanted.items():
        responses.setdefault(status, response)
    for status, response in responses.items():
        # Refusals declared by a view with a description only (OpenApiResponse) answer the error shape.
        if status[0] in "45" and "content" not in response:
            response["content"] = error_response("")["content"]


def postprocess_all_apis(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """drf-spectacular POSTPROCESSING_HOOKS entry: the generated schema plus the plain views and refusals."""
    result.setdefault("components", {}).setdefault("schemas", {})[ERROR_SCHEMA_NAME] = ERROR_SCHEMA
    for path, item in result.get("paths", {}).items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                _refusals_add(path, method, operation)
    _merge(result, model_api_fragment())
    _merge(result, partner_fragment())
    result["paths"] = dict(sorted(result["paths"].items()))
    return result
