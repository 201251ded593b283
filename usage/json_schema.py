"""JSON Schema support of the simulated model: which schemas it accepts, and instances it generates.

Used twice: structured output (``response_format`` ``json_schema``, usage/structured.py) writes an
instance of the caller's schema as the answer, and tool calling (usage/tools.py) writes an instance of
a function's ``parameters`` as the call's arguments.

The supported subset is what client SDKs send (pydantic's ``model_json_schema()``, OpenAI's strict
schemas, hand-written tool parameters): ``type`` (one or a list), ``properties``, ``required``,
``additionalProperties``, ``items``, ``enum``, ``const``, ``anyOf``, ``$ref`` to ``#``, ``#/$defs/..``
or ``#/definitions/..``, ``minimum``/``maximum`` (and exclusive), ``multipleOf``, ``minLength``/
``maxLength``, ``format`` (:data:`FORMATS`), ``minItems``/``maxItems``/``uniqueItems``, ``nullable``,
and the annotations (:data:`ANNOTATIONS`, ``x-`` extensions). Any other keyword (``pattern``, ``oneOf``,
``allOf``, ``not``, ``if``, ``patternProperties``, ...) is refused with a 400 that names it and where
it is (``response_format.json_schema.schema.properties.code.pattern``), so a client never gets output
that silently ignores a constraint.

Generation is deterministic (a ``random.Random`` the caller seeds from the request) and always
validated against the schema with ``jsonschema`` before it is returned: a schema that cannot be
satisfied (``minimum`` above ``maximum``, an empty ``enum``, a required recursive property) is a 400
too. Every property is written (optional ones included), down to a nesting depth of
``_FULL_DEPTH``; below it only required properties and ``minItems`` items, so recursive schemas end.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import referencing.exceptions

from usage import errors

SUPPORTED = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf", "$ref",
        "$defs", "definitions", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
        "minLength", "maxLength", "format", "minItems", "maxItems", "uniqueItems", "nullable",
    }
)  # fmt: skip
ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly",
     "writeOnly", "strict"}
)  # fmt: skip
FORMATS = ("date", "date-time", "time", "email", "uri", "uuid")
_SCHEMA_MAPS = ("properties", "$defs", "definitions")  # keywords whose values map names to schemas
_FULL_DEPTH = 6
_MAX_DEPTH = 24
_WORDS = ("alpha", "bravo", "delta", "echo", "falcon", "harbor", "indigo", "juniper", "kestrel", "lantern")
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


# Schemas already checked, by canonical JSON: clients send the same tools and response format with
# every request, and jsonschema's check against the draft 2020-12 metaschema costs milliseconds (a
# Draft202012Validator for the schema, reused to validate each instance, is kept with it). Bounded.
_CHECKED: dict[str, jsonschema.protocols.Validator] = {}
_CHECKED_MAX = 512


def _canonical(schema: dict) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def schema_check(schema: Any, *, param: str) -> None:
    """Raise a 400 (``InvalidRequest`` naming ``param`` + the path) when ``schema`` is not a valid JSON
    Schema (draft 2020-12) or uses a keyword outside the supported subset."""
    if not isinstance(schema, dict):
        raise errors.InvalidRequest(f"'{param}' must be a JSON Schema object.", param=param)
    key = _canonical(schema)
    if key in _CHECKED:
        return
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = ".".join([param, *(str(p) for p in exc.path)])
        raise errors.InvalidRequest(f"'{where}' is not valid JSON Schema: {exc.message}", param=where) from exc
    _walk(schema, param, schema)
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED[key] = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def _walk(schema: Any, where: str, root: dict) -> None:
    if isinstance(schema, bool):
        return
    for keyword, value in schema.items():
        path = f"{where}.{keyword}"
        if keyword in ANNOTATIONS or keyword.startswith("x-"):
            continue
        if keyword not in SUPPORTED:
            raise errors.InvalidRequest(
                f"'{path}': the JSON Schema keyword '{keyword}' is not supported by this API (supported: "
                f"{', '.join(sorted(SUPPORTED))}).",
                param=path,
            )
        if keyword in _SCHEMA_MAPS:
            for name, sub in value.items():
                _walk(sub, f"{path}.{name}", root)
        elif keyword in ("items", "additionalProperties"):
            _walk(value, path, root)
        elif keyword == "anyOf":
            for index, sub in enumerate(value):
                _walk(sub, f"{path}[{index}]", root)
        elif keyword == "$ref" and not _ref_defined(value, root):
            raise errors.InvalidRequest(
                f"'{path}': only references to the schema itself ('#') or to one of its '$defs' or 'definitions'"
                " ('#/$defs/Name') are supported, and they must exist.",
                param=path,
            )
        elif keyword == "format" and value not in FORMATS:
            raise errors.InvalidRequest(
                f"'{path}': the format '{value}' is not supported (supported: {', '.join(FORMATS)}).", param=path
            )


def _ref_defined(ref: str, root: dict) -> bool:
    if ref == "#":
        return True
    for section in ("$defs", "definitions"):
        prefix = f"#/{section}/"
        if ref.startswith(prefix):
            name = ref[len(prefix) :].replace("~1", "/").replace("~0", "~")
            return "/" not in ref[len(prefix) :] and isinstance(root.get(section), dict) and name in root[section]
    return False


def schema_instance(schema: dict, *, rng: random.Random, words: Sequence[str], param: str) -> Any:
    """A value that validates against ``schema`` (already checked with :func:`schema_check`), built
    from ``rng`` and, for strings, the given ``words`` (the user's keywords) in turn. Raises a 400
    naming ``param`` when the schema cannot be satisfied."""
    writer = _Writer(schema, rng, list(words) or list(_WORDS), param)
    try:
        value = writer.value(schema, 0)
        validator = _CHECKED.get(_canonical(schema)) or jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.FormatChecker()
        )
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    except (ArithmeticError, ValueError, RecursionError, referencing.exceptions.Unresolvable) as exc:
        # Bounds or steps past what a float holds (1e-300 steps to 1e300), a reference jsonschema resolves
        # differently ($id): refused as a schema this API cannot write, never a 500.
        raise errors.InvalidRequest(f"'{param}' cannot be satisfied: {type(exc).__name__}.", param=param) from exc
    if error is not None:
        raise errors.InvalidRequest(f"'{param}' cannot be satisfied: {error.message}", param=param)
    return value


class _Writer:
    def __init__(self, root: dict, rng: random.Random, words: list[str], param: str) -> None:
        self.root = root
        self.rng = rng
        self.words = words
        self.next_word = 0
        self.param = param
        self.refs: list[str] = ["#"]  # the references being written, outermost first (the root is "#")

    def recursive(self, schema: Any) -> bool:
        """Whether ``schema`` (or one of its anyOf branches) refers back to a schema being written."""
        if not isinstance(schema, dict):
            return False
        return schema.get("$ref") in self.refs or any(self.recursive(b) for b in schema.get("anyOf", ()))

    def resolve(self, schema: Any) -> Any:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema:
            ref = schema["$ref"]
            target: Any = self.root
            if ref != "#":
                section, name = ref[2:].split("/", 1)
                target = self.root.get(section, {}).get(name.replace("~1", "/").replace("~0", "~"))
                if target is None:
                    raise errors.InvalidRequest(f"'{self.param}': the reference '{ref}' is not defined.",
                                                param=self.param)  # fmt: skip
            schema = target
            seen += 1
            if seen > _MAX_DEPTH:
                raise errors.InvalidRequest(f"'{self.param}': '{ref}' refers to itself.", param=self.param)
        return schema

    def value(self, schema: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise errors.InvalidRequest(
                f"'{self.param}' cannot be satisfied: its required properties nest without end.", param=self.param
            )
        ref = schema.get("$ref") if isinstance(schema, dict) else None
        if ref is not None:
            self.refs.append(ref)
            try:
                return self.value(self.resolve(schema), depth)
            finally:
                self.refs.pop()
        if schema is True or schema == {}:
            return self.string({})
        if schema is False:
            raise errors.InvalidRequest(f"'{self.param}' cannot be satisfied: it contains 'false'.", param=self.param)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            if not schema["enum"]:
                raise errors.InvalidRequest(f"'{self.param}' cannot be satisfied: an empty enum.", param=self.param)
            return schema["enum"][self.rng.randrange(len(schema["enum"]))]
        if "anyOf" in schema:
            # A branch that is neither null nor recursive, else one that ends (null), else the first.
            branches = schema["anyOf"]
            ending = [b for b in branches if not self.recursive(b)]
            chosen = next((b for b in ending if self.resolve(b) is True or self.resolve(b).get("type") != "null"),
                          ending[0] if ending else branches[0])  # fmt: skip
            return self.value(chosen, depth)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        return getattr(self, kind)(schema, depth) if kind in ("object", "array") else getattr(self, kind)(schema)

    def object(self, schema: dict, depth: int) -> dict:
        required = set(schema.get("required", ()))
        result = {}
        for name, sub in schema.get("properties", {}).items():
            # Optional properties are written too, except below _FULL_DEPTH or where they recurse.
            if name in required or (depth < _FULL_DEPTH and not self.recursive(sub)):
                result[name] = self.value(sub, depth + 1)
        extra = schema.get("additionalProperties", True)
        for name in sorted(required - set(result)):  # required but not described: what the rest allows
            result[name] = self.value(extra if isinstance(extra, dict) else True, depth + 1)
        if not result and extra is not False and depth < _FULL_DEPTH:  # a free-form object: not empty
            result["value"] = self.value(extra if isinstance(extra, dict) else True, depth + 1)
        return result

    def array(self, schema: dict, depth: int) -> list:
        low = schema.get("minItems", 0)
        high = schema.get("maxItems", max(low, 3))
        count = low if depth >= _FULL_DEPTH else max(low, min(high, 2))
        items = schema.get("items", True)
        result: list = []
        attempts = 0
        while len(result) < count and attempts < count * 8 + 8:
            attempts += 1
            item = self.value(items, depth + 1)
            if schema.get("uniqueItems") and item in result:
                continue
            result.append(item)
        return result

    def string(self, schema: dict) -> str:
        fmt = schema.get("format")
        if fmt == "date-time":
            text = (_EPOCH + timedelta(minutes=self.rng.randrange(525_600))).isoformat().replace("+00:00", "Z")
        elif fmt == "date":
            text = (_EPOCH + timedelta(days=self.rng.randrange(365))).date().isoformat()
        elif fmt == "time":
            text = f"{self.rng.randrange(24):02d}:{self.rng.randrange(60):02d}:00Z"
        elif fmt == "email":
            text = f"{self._word().lower()}@example.com"
        elif fmt == "uri":
            text = f"https://example.com/{self._word().lower()}"
        elif fmt == "uuid":
            text = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        else:
            text = self._word()
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        while len(text) < low:
            text += " " + self._word()
        if high is not None and len(text) > high:
            text = text[:high].rstrip() if len(text[:high].rstrip()) >= low else text[:high]
        return text

    def _word(self) -> str:
        word = self.words[self.next_word % len(self.words)]
        self.next_word += 1
        return word

    def integer(self, schema: dict) -> int:
        low, high = self._range(schema, integer=True)
        step = schema.get("multipleOf", 1)
        if isinstance(step, float) and not step.is_integer():
            step = 1  # an integer multiple of a fraction: any integer multiple of 1 / step works only by luck
        step = int(step)
        first = -(-low // step) * step
        if first > high:
            raise errors.InvalidRequest(f"'{self.param}' cannot be satisfied: no integer in range.", param=self.param)
        return first + step * self.rng.randrange((high - first) // step + 1)

    def number(self, schema: dict) -> float | int:
        low, high = self._range(schema, integer=False)
        if "multipleOf" in schema:
            step = schema["multipleOf"]
            first, last = int(-(-low // step)), int(high // step)
            if first > last:
                raise errors.InvalidRequest(f"'{self.param}' cannot be satisfied: no multiple in range.",
                                            param=self.param)  # fmt: skip
            return (first + self.rng.randrange(last - first + 1)) * step
        value = round(low + (high - low) * self.rng.random(), 2)
        return min(max(value, low), high)

    def _range(self, schema: dict, *, integer: bool) -> tuple:
        low, high = schema.get("minimum"), schema.get("maximum")
        if "exclusiveMinimum" in schema:
            bound = schema["exclusiveMinimum"]
            bound = bound + 1 if integer else bound + max(abs(bound) * 1e-9, 0.01)
            low = bound if low is None else max(low, bound)
        if "exclusiveMaximum" in schema:
            bound = schema["exclusiveMaximum"]
            bound = bound - 1 if integer else bound - max(abs(bound) * 1e-9, 0.01)
            high = bound if high is None else min(high, bound)
        if integer:
            low = None if low is None else int(-(-low // 1))
            high = None if high is None else int(high // 1)
        if low is None:
            low = 0 if high is None or high >= 0 else high - 100
        if high is None:
            high = low + 100
        if low > high:
            raise errors.InvalidRequest(f"'{self.param}' cannot be satisfied: an empty range.", param=self.param)
        return low, high

    def boolean(self, schema: dict) -> bool:
        return bool(self.rng.getrandbits(1))

    def null(self, schema: dict) -> None:
        return None
