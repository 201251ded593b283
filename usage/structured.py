"""Structured output of the simulated model: ``response_format`` in both API shapes.

- ``{"type": "text"}`` (the default): prose.
- ``{"type": "json_schema", "json_schema": {"name", "schema", "description"?, "strict"?}}``: the answer
  is the JSON text of an instance of ``schema`` (usage/json_schema.py: it parses and validates; a
  keyword outside the supported subset is a 400 naming it).
- ``{"type": "json_object"}``: the answer is a JSON object ``{"topic": ..., "answer": ...}`` with the
  prose answer in it. OpenAI's shape; the native shape accepts it too (the Llama API documents
  ``json_schema`` and ``text`` only), so one client code path works on both.

Either JSON answer is cut at the token limit like prose (then ``stop_reason: "length"`` and the text
does not parse, as with the real APIs); the schema's tokens count in the prompt.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from usage import errors
from usage.json_schema import schema_check, schema_instance

_FORMAT_FIELDS = {
    "text": frozenset({"type"}),
    "json_object": frozenset({"type"}),
    "json_schema": frozenset({"type", "json_schema"}),
}
_JSON_SCHEMA_FIELDS = frozenset({"name", "schema", "description", "strict"})


@dataclass(frozen=True)
class ResponseFormat:
    type: str  # "json_object" or "json_schema" ("text" is no format: None)
    schema: dict | None = None
    name: str = ""


def response_format_parse(value: Any) -> ResponseFormat | None:
    """``response_format`` of a request; None for absent or ``{"type": "text"}``."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in _FORMAT_FIELDS:
        raise errors.InvalidRequest(
            '\'response_format\' must be {"type": "text"}, {"type": "json_object"} or '
            '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}.',
            param="response_format",
        )
    for name in value:
        if name not in _FORMAT_FIELDS[value["type"]]:
            raise errors.InvalidRequest(f"Unknown parameter 'response_format.{name}'.", param=f"response_format.{name}")
    if value["type"] == "text":
        return None
    if value["type"] == "json_object":
        return ResponseFormat("json_object")
    spec = value.get("json_schema")
    where = "response_format.json_schema"
    if not isinstance(spec, dict):
        raise errors.InvalidRequest(f"'{where}' must be an object with 'name' and 'schema'.", param=where)
    for name in spec:
        if name not in _JSON_SCHEMA_FIELDS:
            raise errors.InvalidRequest(f"Unknown parameter '{where}.{name}'.", param=f"{where}.{name}")
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise errors.InvalidRequest(f"'{where}.name' must be a non-empty string.", param=f"{where}.name")
    for name, types in (("description", str), ("strict", bool | type(None))):
        if name in spec and not isinstance(spec[name], types):
            raise errors.InvalidRequest(f"'{where}.{name}' has the wrong type.", param=f"{where}.{name}")
    schema = spec.get("schema")
    if schema is None:
        schema = {"type": "object"}  # OpenAI: a missing schema means any JSON object
    schema_check(schema, param=f"{where}.schema")
    return ResponseFormat("json_schema", schema=schema, name=spec["name"])


def structured_text(fmt: ResponseFormat, *, rng: random.Random, words: Sequence[str], prose: str) -> str:
    """The answer's text in ``fmt``: JSON of a schema instance, or the prose wrapped in an object."""
    if fmt.type == "json_object":
        return json.dumps({"topic": " ".join(words[:3]) or "your question", "answer": prose})
    assert fmt.schema is not None
    return json.dumps(schema_instance(fmt.schema, rng=rng, words=words, param="response_format.json_schema.schema"))
