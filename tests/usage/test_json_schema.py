"""usage/json_schema.py and the tool rule of usage/tools.py, without a server: what schemas are
accepted, that every generated instance validates (jsonschema), and which tools a message names."""

from __future__ import annotations

import random
from datetime import date
from enum import StrEnum
from typing import Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from usage import errors
from usage.json_schema import schema_check, schema_instance
from usage.tools import ToolChoice, salient_words, tools_parse, tools_to_call


class Colour(StrEnum):
    red = "red"
    green = "green"


class Address(BaseModel):
    street: str = Field(min_length=3, max_length=40)
    postcode: str | None = None


class Person(BaseModel):
    name: str
    born: date
    colour: Colour
    height_m: float = Field(gt=0.5, lt=2.5)
    shoe: int = Field(ge=30, le=50, multiple_of=2)
    kind: Literal["a", "b"]
    addresses: list[Address] = Field(min_length=1, max_length=2)
    friends: list[Person] = []


SCHEMAS = [
    Person.model_json_schema(),
    {"type": "object"},
    {"type": ["string", "null"], "format": "uuid"},
    {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5}, "minItems": 4, "uniqueItems": True},
    {"type": "object", "properties": {"at": {"type": "string", "format": "date-time"}}, "required": ["at", "extra"]},
    {"anyOf": [{"type": "number", "exclusiveMaximum": 0}, {"type": "null"}]},
    {"const": {"fixed": [1, 2]}},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_every_instance_validates_for_many_seeds(schema):
    schema_check(schema, param="s")
    seen = set()
    for seed in range(40):
        value = schema_instance(schema, rng=random.Random(seed), words=["Paris", "alpaca"], param="s")
        jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
        seen.add(repr(value))
    # The seed matters, except where the values are the message's words (a free-form object's one string).
    assert len(seen) > 1 or "const" in schema or schema == {"type": "object"}
    again = schema_instance(schema, rng=random.Random(3), words=["Paris", "alpaca"], param="s")
    assert again == schema_instance(schema, rng=random.Random(3), words=["Paris", "alpaca"], param="s")


def test_pydantic_parses_the_instances():
    schema = Person.model_json_schema()
    for seed in range(20):
        Person.model_validate(schema_instance(schema, rng=random.Random(seed), words=[], param="s"))


@pytest.mark.parametrize(
    ("schema", "param"),
    [
        ({"type": "string", "pattern": "^a"}, "s.pattern"),
        ({"properties": {"a": {"allOf": [{}]}}}, "s.properties.a.allOf"),
        ({"type": "string", "format": "ipv4"}, "s.format"),
        ({"$ref": "https://example.com/schema"}, "s.$ref"),
        ({"$ref": "#/$defs/Missing"}, "s.$ref"),
        ({"type": "integer", "minimum": 3, "maximum": 2}, "s"),
        ({"enum": []}, "s"),
        ({"type": "object", "properties": {"me": {"$ref": "#"}}, "required": ["me"]}, "s"),
        ({"type": 5}, "s.type"),
        ([], "s"),
    ],
)
def test_unsupported_or_unsatisfiable_schemas_are_a_400_naming_where(schema, param):
    with pytest.raises(errors.InvalidRequest) as refused:
        schema_check(schema, param="s")
        schema_instance(schema, rng=random.Random(1), words=[], param="s")
    assert refused.value.extra == {"field": param}


TOOLS = tools_parse(
    [
        {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather for a city"}},
        {"type": "function", "function": {"name": "send-email", "description": "Send a message to someone"}},
    ]
)


@pytest.mark.parametrize(
    ("text", "mode", "parallel", "called"),
    [
        ("What is the weather like?", "auto", True, ["get_weather"]),  # a description keyword
        ("Please call get_weather now", "auto", True, ["get_weather"]),  # the name
        ("Can you send email to Bob?", "auto", True, ["send-email"]),  # the name, spoken
        ("Weather, then send email", "auto", True, ["get_weather", "send-email"]),
        ("Weather, then send email", "auto", False, ["get_weather"]),
        ("Tell me a story", "auto", True, []),
        ("Tell me a story", "required", True, ["get_weather"]),
        ("What is the weather like?", "none", True, []),
    ],
)
def test_which_tools_a_message_names(text, mode, parallel, called):
    messages = [{"role": "user", "content": text}]
    chosen = tools_to_call(tools=TOOLS, choice=ToolChoice(mode), messages=messages, parallel=parallel)
    assert [t.name for t in chosen] == called


def test_after_a_tool_result_auto_answers_instead_of_calling_again():
    messages = [
        {"role": "user", "content": "What is the weather in Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]  # fmt: skip
    assert tools_to_call(tools=TOOLS, choice=ToolChoice("auto"), messages=messages, parallel=True) == []
    assert tools_to_call(tools=TOOLS, choice=ToolChoice("named", "send-email"), messages=messages, parallel=True)


def test_salient_words_put_proper_nouns_first():
    words = salient_words([{"role": "user", "content": "Book a table in Lisbon near the Alfama district tonight."}])
    assert words[:2] == ["Lisbon", "Alfama"] and "district" in words
