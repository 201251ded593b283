"""One chat request answered by the simulated model: every choice, with its tool calls, structured
output, stop sequences and log probabilities. Deterministic: the same request gives the same result.

Per choice (``n`` of them, OpenAI shape; choice 0 is exactly what ``n: 1`` gives, the others use the
request's seed combined with their index):

1. Tools the rule calls (usage/tools.py) → ``tool_calls``, no text, ``stop_reason: "tool_calls"``.
2. Otherwise the text: the simulated prose (usage/simulator.py ``complete``), opened by the quoted
   tool results when the last messages are tool results, or the structured output
   (usage/structured.py) when ``response_format`` asks for JSON.
3. The text is cut at the token limit (``max_tokens``, and at most ``MAX_COMPLETION_TOKENS`` per
   choice: ``stop_reason: "length"``), then before the first ``stop`` sequence in what remains (the
   sequence itself is not returned; ``stop_reason: "stop"``).
4. ``logprobs``: one entry per token of the returned text (their texts join to it exactly), with a
   log probability drawn from a hash of the token and its position (between -3 and 0), and with
   ``top_logprobs`` alternatives, the returned token first and the others less likely.

``temperature``, ``top_p``, ``top_k``, ``repetition_penalty``, ``presence_penalty`` and
``frequency_penalty`` are accepted and validated, and change nothing: the simulated model has no
sampling to adjust. ``seed`` changes the answer (it is part of what seeds the text); ``user`` is only
accepted. Prompt tokens are the messages' (usage/tokenizer.py) plus the JSON of the tool definitions
and of the response schema; completion tokens are every choice's text and tool calls.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field

from usage.chat_request import ChatRequest
from usage.simulator import MAX_COMPLETION_TOKENS, complete
from usage.structured import structured_text
from usage.tokenizer import count_message_tokens, count_tokens, tokenize
from usage.tools import ToolCall, salient_words, tool_call_make, tool_results_text, tools_to_call

_ALTERNATIVES = (" the", " a", " and", " of", ",", ".", " to", " is", " it", " in", " for", " on", "\n", " as")
_ALTERNATIVE_BYTES = {token: list(token.encode()) for token in _ALTERNATIVES}


@dataclass(frozen=True)
class ChatChoice:
    index: int
    text: str | None  # None: the choice only calls tools
    tokens: list[str]
    stop_reason: str  # "stop", "length" or "tool_calls"
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: list[dict] | None = None
    completion_tokens: int = 0


@dataclass(frozen=True)
class ChatResult:
    choices: tuple[ChatChoice, ...]
    prompt_tokens: int
    completion_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "completion_tokens", sum(c.completion_tokens for c in self.choices))

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    # The first choice, as the single-choice callers (the native shape, the bench baseline) read it.
    @property
    def text(self) -> str:
        return self.choices[0].text or ""

    @property
    def stop_reason(self) -> str:
        return self.choices[0].stop_reason


def token_limit(chat: ChatRequest) -> int:
    """The most completion tokens one choice may have: ``max_tokens``, at most MAX_COMPLETION_TOKENS."""
    return min(chat.max_tokens or MAX_COMPLETION_TOKENS, MAX_COMPLETION_TOKENS)


def reserve_tokens(chat: ChatRequest, prompt_tokens: int) -> int:
    """What a request reserves against the limits: its prompt and every choice's maximum."""
    return prompt_tokens + chat.n * token_limit(chat)


def _choice_seed(chat: ChatRequest, index: int) -> int | None:
    if index == 0:
        return chat.seed
    digest = hashlib.blake2b(f"{chat.seed}:{index}".encode(), digest_size=6).digest()
    return int.from_bytes(digest, "big")


def _rng(*parts: object) -> random.Random:
    canonical = json.dumps(parts, sort_keys=True, default=str)
    return random.Random(hashlib.blake2b(canonical.encode(), digest_size=8).digest())  # noqa: S311


def chat_complete(chat: ChatRequest) -> ChatResult:
    """Every choice of ``chat`` (see the module docstring)."""
    limit = token_limit(chat)
    extra_prompt = 0
    if chat.tools:
        extra_prompt += count_tokens(json.dumps([t.parameters | {"name": t.name} for t in chat.tools]))
        extra_prompt += sum(count_tokens(t.description) for t in chat.tools)
    if chat.response_format is not None and chat.response_format.schema is not None:
        extra_prompt += count_tokens(json.dumps(chat.response_format.schema))
    calls = tools_to_call(
        tools=chat.tools, choice=chat.tool_choice, messages=chat.messages, parallel=chat.parallel_tool_calls
    )
    if calls:  # no prose to write: the prompt is counted on its own
        choices = [_tool_choice(chat, index, _choice_seed(chat, index), calls, limit) for index in range(chat.n)]
        return ChatResult(choices=tuple(choices), prompt_tokens=count_message_tokens(chat.messages) + extra_prompt)
    prompt_tokens = None
    choices = []
    for index in range(chat.n):
        seed = _choice_seed(chat, index)
        prose = complete(model=chat.model, messages=chat.messages, max_tokens=limit, seed=seed)
        prompt_tokens = prose.prompt_tokens  # the tokenizer's count, made once by complete()
        if chat.response_format is not None:
            rng = _rng(chat.model, chat.messages, seed, "structured")
            text = structured_text(chat.response_format, rng=rng, words=salient_words(chat.messages), prose=prose.text)
        elif chat.messages[-1].get("role") == "tool":
            text = f"{tool_results_text(chat.messages)}\n\n{prose.text}"
        else:  # plain prose, already cut at the limit by complete()
            choices.append(_text_choice(chat, index, prose.text, prose.tokens, prose.stop_reason))
            continue
        choices.append(_text_choice(chat, index, text, tokenize(text), "stop", limit))
    assert prompt_tokens is not None
    return ChatResult(choices=tuple(choices), prompt_tokens=prompt_tokens + extra_prompt)


def _tool_choice(chat: ChatRequest, index: int, seed: int | None, calls, limit: int) -> ChatChoice:
    made: list[ToolCall] = []
    used = 0
    stop_reason = "tool_calls"
    for number, tool in enumerate(calls):
        call = tool_call_make(tool=tool, model=chat.model, messages=chat.messages, seed=seed, choice=index,
                              index=number)  # fmt: skip
        cost = count_tokens(call.name) + count_tokens(call.arguments)
        if used + cost > limit:  # cut at the limit, as prose is: arguments that do not parse
            room = max(0, limit - used - count_tokens(call.name))
            call = ToolCall(id=call.id, name=call.name, arguments="".join(tokenize(call.arguments)[:room]))
            made.append(call)
            used = min(limit, used + count_tokens(call.name) + room)
            stop_reason = "length"
            break
        made.append(call)
        used += cost
    return ChatChoice(index=index, text=None, tokens=[], stop_reason=stop_reason, tool_calls=tuple(made),
                      completion_tokens=used)  # fmt: skip


def _text_choice(
    chat: ChatRequest, index: int, text: str, tokens: list[str], stop_reason: str, limit: int | None = None
) -> ChatChoice:
    if limit is not None and len(tokens) > limit:
        tokens = tokens[:limit]  # prefix-stable: these tokens are exactly the cut text's
        text = "".join(tokens)
        stop_reason = "length"
    cut = min((at for at in (text.find(s) for s in chat.stop) if at >= 0), default=-1) if chat.stop else -1
    if cut >= 0:
        text = text[:cut]
        tokens = tokenize(text)
        stop_reason = "stop"
    logprobs = _logprobs(tokens, chat.top_logprobs, index) if chat.logprobs else None
    return ChatChoice(index=index, text=text, tokens=tokens, stop_reason=stop_reason, logprobs=logprobs,
                      completion_tokens=len(tokens))  # fmt: skip


def _logprob(token: str, position: int, salt: str) -> float:
    digest = hashlib.blake2b(f"{salt}:{position}:{token}".encode(), digest_size=4).digest()
    return -round(int.from_bytes(digest, "big") / 2**32 * 3, 4)


def _entry(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": _ALTERNATIVE_BYTES.get(token) or list(token.encode())}


def _logprobs(tokens: list[str], top: int, choice: int) -> list[dict]:
    """OpenAI's ``logprobs.content``: per token, its simulated log probability and ``top`` alternatives
    (the token itself first, the others strictly less likely and distinct)."""
    content = []
    for position, token in enumerate(tokens):
        logprob = _logprob(token, position, str(choice))
        alternatives = [_entry(token, logprob)]
        for offset, other in enumerate(t for t in _ALTERNATIVES if t != token):
            if len(alternatives) >= top:
                break
            alternatives.append(_entry(other, round(logprob - 0.5 - offset * 0.7 - (position % 3) * 0.1, 4)))
        content.append({**_entry(token, logprob), "top_logprobs": alternatives[:top]})
    return content
