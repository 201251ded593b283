"""Tool calling of the simulated model (both API shapes), deterministic like the rest of it.

The rule — when the model calls a tool. Given ``tools``:

1. ``tool_choice: "none"``: never.
2. ``tool_choice: {"type": "function", "function": {"name": N}}``: always, exactly the tool N.
3. Otherwise (``"auto"``, the default, or ``"required"``) the tools *named in the last message* are
   called, if that message is the user's: a tool is named when the message contains its name (any
   case; ``get_weather`` also as "get weather") or one of its description's keywords (words of five
   letters or more that are not common words: "Get the current weather for a city" has the keyword
   "weather"). With ``parallel_tool_calls: false`` only the first of them. With ``"required"`` and no
   tool named, the first tool is called.
4. After the tool results (the last message has ``role: "tool"``), ``"auto"`` answers in prose that
   quotes each result ("The get_weather tool returned: {...}."), then the usual simulated answer.

Arguments are an instance of the function's ``parameters`` schema (usage/json_schema.py: types,
required properties, enums, ranges, formats), with the user's salient words as string values (proper
nouns first: "weather in Paris" gives ``{"city": "Paris"}``), from a ``random.Random`` seeded with the
request, the tool and the choice: the same request always makes the same calls. A call costs the
tokens of its function name and arguments (usage/tokenizer.py counts them the same way in a prompt);
the tool definitions count in the prompt as the tokens of their JSON.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from usage import errors
from usage.json_schema import schema_check, schema_instance
from usage.tokenizer import content_text

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_WORD = re.compile(r"[^\W\d_]+")
_COMMON_TEXT = """
    about above after again against always among another answer anything around available based
    because before being below between called cannot could current della different during every
    example first following function given information input known later might never number other
    others output parameter parameters please provided result results return returns should since
    something specific specified string their there these thing things those through tool under until
    useful using value values whether which while would write
"""
_COMMON = frozenset(_COMMON_TEXT.split())
_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
TOOL_FIELDS = frozenset({"type", "function"})
FUNCTION_FIELDS = frozenset({"name", "description", "parameters", "strict"})


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict
    keywords: frozenset[str]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as both APIs carry it


@dataclass(frozen=True)
class ToolChoice:
    mode: str  # "none", "auto", "required" or "named"
    name: str | None = None


def _closed(obj: dict, allowed: frozenset, where: str) -> None:
    for name in obj:
        if name not in allowed:
            raise errors.InvalidRequest(f"Unknown parameter '{where}.{name}'.", param=f"{where}.{name}")


def tools_parse(value: Any) -> tuple[Tool, ...]:
    """``tools`` of a request: a list of ``{"type": "function", "function": {"name", "description",
    "parameters", "strict"}}``; each name unique and 1-64 letters, digits, ``_`` or ``-``."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise errors.InvalidRequest("'tools' must be a list of function tools.", param="tools")
    tools: list[Tool] = []
    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise errors.InvalidRequest(
                f'\'{where}\' must be {{"type": "function", "function": {{...}}}}.', param=where
            )
        _closed(tool, TOOL_FIELDS, where)
        function = tool["function"]
        _closed(function, FUNCTION_FIELDS, f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise errors.InvalidRequest(
                f"'{where}.function.name' must be 1-64 letters, digits, '_' or '-'.", param=f"{where}.function.name"
            )
        if any(t.name == name for t in tools):
            raise errors.InvalidRequest(f"Two tools are named '{name}'.", param=f"{where}.function.name")
        description = function.get("description", "")
        if not isinstance(description, str):
            raise errors.InvalidRequest(f"'{where}.function.description' must be a string.",
                                        param=f"{where}.function.description")  # fmt: skip
        if "strict" in function and not isinstance(function["strict"], bool | type(None)):
            raise errors.InvalidRequest(f"'{where}.function.strict' must be true or false.",
                                        param=f"{where}.function.strict")  # fmt: skip
        parameters = function.get("parameters")
        if parameters is None:
            parameters = _EMPTY_PARAMETERS
        schema_check(parameters, param=f"{where}.function.parameters")
        keywords = frozenset(w for w in _words(description) if len(w) >= 5 and w not in _COMMON)
        tools.append(Tool(name=name, description=description, parameters=parameters, keywords=keywords))
    return tuple(tools)


def tool_choice_parse(value: Any, tools: Sequence[Tool]) -> ToolChoice:
    """``tool_choice``: "none", "auto", "required" or ``{"type": "function", "function": {"name"}}``
    naming one of ``tools``. Without tools only "none" and "auto" make sense."""
    if value is None:
        return ToolChoice("auto" if tools else "none")
    if value in ("none", "auto", "required"):
        choice = ToolChoice(value)
    elif (
        isinstance(value, dict)
        and value.get("type") == "function"
        and isinstance(value.get("function"), dict)
        and isinstance(value["function"].get("name"), str)
        and set(value) == {"type", "function"}
        and set(value["function"]) == {"name"}
    ):
        choice = ToolChoice("named", value["function"]["name"])
        if not any(t.name == choice.name for t in tools):
            raise errors.InvalidRequest(
                f"'tool_choice' names the function '{choice.name}', which is not in 'tools'.",
                param="tool_choice.function.name",
            )
    else:
        raise errors.InvalidRequest(
            '\'tool_choice\' must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}.',
            param="tool_choice",
        )
    if choice.mode == "required" and not tools:
        raise errors.InvalidRequest("'tool_choice' is \"required\" but no 'tools' are given.", param="tool_choice")
    return choice


def tool_calls_parse(value: Any, where: str) -> None:
    """Validate an assistant message's ``tool_calls`` sent back: ``[{"id", "type"?, "function": {"name",
    "arguments"}}]``."""
    if not isinstance(value, list):
        raise errors.InvalidRequest(f"'{where}' must be a list of tool calls.", param=where)
    for index, call in enumerate(value):
        at = f"{where}[{index}]"
        if (
            not isinstance(call, dict)
            or not isinstance(call.get("id"), str)
            or call.get("type", "function") != "function"
            or not isinstance(call.get("function"), dict)
            or not isinstance(call["function"].get("name"), str)
            or not isinstance(call["function"].get("arguments"), str)
        ):
            raise errors.InvalidRequest(
                f'\'{at}\' must be {{"id", "type": "function", "function": {{"name", "arguments"}}}}.',
                param=at,
            )
        _closed(call, frozenset({"id", "type", "function"}), at)
        _closed(call["function"], frozenset({"name", "arguments"}), f"{at}.function")


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _last_text(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The last message's text when it is the user's, else None."""
    last = messages[-1]
    if last.get("role") != "user":
        return None
    return content_text(last.get("content"))[0]


def tools_to_call(
    *, tools: Sequence[Tool], choice: ToolChoice, messages: Sequence[Mapping[str, Any]], parallel: bool
) -> list[Tool]:
    """The tools the model calls for this request, in ``tools`` order (the rule in the module docstring)."""
    if not tools or choice.mode == "none":
        return []
    if choice.mode == "named":
        return [t for t in tools if t.name == choice.name]
    text = _last_text(messages)
    named: list[Tool] = []
    if text is not None:
        lowered = text.lower()
        words = set(_words(text))
        for tool in tools:
            spoken = tool.name.lower().replace("_", " ").replace("-", " ")
            if tool.name.lower() in lowered or spoken in lowered or tool.keywords & words:
                named.append(tool)
    if not named and choice.mode == "required":
        named = [tools[0]]
    return named[:1] if not parallel else named


def salient_words(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """The last user message's likely values: capitalised words not opening a sentence (names, places)
    first, then the longest other uncommon words; at most eight."""
    for message in reversed(messages):
        if message.get("role") == "user":
            text = content_text(message.get("content"))[0][:600]
            break
    else:
        return []
    proper: list[str] = []
    others: list[str] = []
    for match in _WORD.finditer(text):
        word = match.group()
        before = text[: match.start()].rstrip()
        opens_sentence = not before or before[-1] in ".!?"
        if word[0].isupper() and not opens_sentence and word not in proper:
            proper.append(word)
        elif len(word) >= 4 and word.lower() not in _COMMON and word.lower() not in others:
            others.append(word.lower())
    others.sort(key=len, reverse=True)
    return (proper + others)[:8]


def tool_call_make(
    *, tool: Tool, model: str, messages: Sequence[Mapping[str, Any]], seed: int | None, choice: int, index: int
) -> ToolCall:
    """The call of ``tool``: arguments generated from its parameters schema, id and values from a hash
    of the request, so the same request makes the same call."""
    canonical = json.dumps([model, messages, seed, tool.name, choice, index], sort_keys=True, default=str)
    digest = hashlib.blake2b(canonical.encode(), digest_size=16).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))  # noqa: S311 - simulated output, not security
    arguments = schema_instance(
        tool.parameters, rng=rng, words=salient_words(messages), param=f"tools[{tool.name}].function.parameters"
    )
    return ToolCall(id=f"call_{digest.hex()[:24]}", name=tool.name, arguments=json.dumps(arguments))


def tool_results_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """For a request whose last messages are tool results: a sentence quoting each result, with the
    name of the function that produced it (found through ``tool_call_id``); else ""."""
    names: dict[str, str] = {}
    for message in messages:
        for call in message.get("tool_calls") or ():
            names[call["id"]] = call["function"]["name"]
    results: list[str] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        text = " ".join(content_text(message.get("content"))[0].split())
        if len(text) > 300:
            text = text[:300].rsplit(" ", 1)[0] + " ..."
        name = names.get(message.get("tool_call_id") or "", "the tool")
        label = f"The {name} tool" if name != "the tool" else "The tool"
        results.append(f"{label} returned: {text}")
    return " ".join(f"{r.rstrip('.')}." for r in reversed(results))
