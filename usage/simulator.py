"""The simulated model behind TierLab's model API: deterministic prose, real token accounting.

:func:`complete` answers a chat request the way a Llama model's API would, without a model. The text
is built from a small built-in vocabulary and sentence templates, opening with a few keywords of the
last user message ("You asked about vector databases and indexing."). A ``random.Random`` seeded with
a hash of the canonical JSON of ``(model, messages, seed)`` drives every choice, so the same request
always gets the same answer and different requests (almost always) get different ones. Each model
family has its own style: the 8B model is brief and plain, the 70B model more discursive, Scout
answers with bullet points and Maverick with numbered steps ("First, ... Finally, ...").

The answer's natural length is drawn between ``MIN_NATURAL_TOKENS`` and ``MAX_NATURAL_TOKENS``
(20-160 tokens, rounded up to a whole sentence), so ``stop_reason == "stop"``. When ``max_tokens`` is
smaller, the answer is cut at exactly ``max_tokens`` tokens and ``stop_reason == "length"``.
``max_tokens=None`` means no caller limit: the natural length, capped at ``MAX_COMPLETION_TOKENS``
(the number a caller should reserve for a request without ``max_tokens``).

Tokens come from :mod:`usage.tokenizer`: ``completion.tokens`` are the answer's tokens in order, their
concatenation is ``completion.text`` and ``completion_tokens == len(tokens) == count_tokens(text)``;
``prompt_tokens == count_message_tokens(messages)``. :func:`iter_chunks` groups the tokens for
streaming. The tokenizer and the simulated Llama Guard (:func:`moderate`) are re-exported here, so
callers can import everything model-related from this module.

Cost, measured with timeit on the 2-core development machine: about 80 us for ``complete()`` with a
190-token prompt and a 100-token answer (prompt counting ~18 us, keywords ~20 us, generation and
tokenizing the rest); ``count_tokens`` of 800 characters ~16 us.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from usage.moderation import CATEGORIES, ModerationResult, moderate
from usage.tokenizer import content_text, count_message_tokens, count_tokens, tokenize

__all__ = [
    "CATEGORIES",
    "MAX_COMPLETION_TOKENS",
    "MAX_NATURAL_TOKENS",
    "MIN_NATURAL_TOKENS",
    "Completion",
    "ModerationResult",
    "complete",
    "count_message_tokens",
    "count_tokens",
    "iter_chunks",
    "moderate",
    "tokenize",
]

MIN_NATURAL_TOKENS = 20
MAX_NATURAL_TOKENS = 160
MAX_COMPLETION_TOKENS = 512
"""The most tokens a completion can have when the caller sets no ``max_tokens``."""

StopReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Completion:
    """One simulated answer.

    ``text == "".join(tokens)``; ``completion_tokens == len(tokens) == count_tokens(text)``;
    ``prompt_tokens == count_message_tokens(messages)``; ``stop_reason`` is ``"length"`` when the
    answer was cut at ``max_tokens`` (or ``MAX_COMPLETION_TOKENS``), else ``"stop"``.
    """

    text: str
    tokens: list[str]
    completion_tokens: int
    prompt_tokens: int
    stop_reason: StopReason

    @property
    def total_tokens(self) -> int:
        """``prompt_tokens + completion_tokens``, as the ``usage`` block reports it."""
        return self.prompt_tokens + self.completion_tokens


# ---------------------------------------------------------------------------------------------------
# Vocabulary. Every entry is plain letters and spaces, so sentences tokenize predictably.

_NOUNS = (
    "approach", "baseline", "budget", "cache", "constraint", "context", "dataset", "default",
    "deployment", "design", "detail", "example", "feedback", "goal", "interface", "latency",
    "limit", "metric", "model", "outcome", "pattern", "plan", "policy", "process", "prototype",
    "requirement", "resource", "result", "risk", "schedule", "signal", "source", "step", "strategy",
    "system", "team", "test", "timeline", "tool", "trade off", "workflow",
)  # fmt: skip
_ADJECTIVES = (
    "careful", "clear", "consistent", "focused", "gradual", "measurable", "modest", "practical",
    "predictable", "realistic", "reliable", "simple", "small", "specific", "steady", "well defined",
)  # fmt: skip
_VERBS = (
    "check", "compare", "define", "document", "measure", "outline", "prioritize", "review",
    "simplify", "test", "track", "validate", "write down",
)  # fmt: skip
_CONNECTIVES_PLAIN = ("Also", "Then", "Next", "In short", "In practice", "Usually")
_CONNECTIVES_RICH = (
    "Moreover", "In addition", "On the other hand", "At the same time", "As a rule", "In practice",
    "Beyond that", "More broadly", "That said", "In many cases",
)  # fmt: skip
_FALLBACK_TOPICS = ("this topic", "your project", "the task", "this problem")  # when no keywords
_ORDINALS = ("First", "Second", "Third", "Fourth", "Fifth", "Sixth", "Seventh", "Eighth", "Ninth", "Tenth")

_OPENINGS = (
    "You asked about {topic}.",
    "Here is a short overview of {topic}.",
    "Good question about {topic}.",
    "Let us look at {topic}.",
    "There are a few things to know about {topic}.",
)
_OPENINGS_NO_TOPIC = (
    "Thanks for your message.",
    "Here is a brief answer.",
    "Happy to help with that.",
)
_BODY = (
    "In practice, {kw} depends on a {adj} {noun} and a {adj2} {noun2}.",
    "A useful first step is to {verb} the {noun} and then {verb2} the {noun2}.",
    "Most teams find that a {adj} {noun} makes {kw} easier to {verb}.",
    "It helps to {verb} each {noun} before you {verb2} the {noun2}.",
    "The main trade off is between the {noun} and the {noun2}.",
    "If the {noun} is not {adj}, {kw} will be harder to {verb}.",
    "A {adj} {noun} is usually better than a clever one.",
    "Keep the {noun} {adj} and {verb} it as you go.",
    "When {kw} grows, {verb} the {noun} again.",
    "The {noun} matters more than the {noun2} here.",
    "Try to {verb} the {noun} with a {adj} {noun2}.",
    "For {kw}, a {adj} {noun} is a good place to start.",
    "You can {verb} the {noun} in a few minutes.",
    "Small changes to the {noun} often have a large effect on {kw}.",
)
_RICH_EXTRA = (
    "which keeps the {noun} {adj} over time",
    "so that the {noun} stays easy to {verb}",
    "because a {adj} {noun} is easier to {verb}",
    "while the {noun2} remains {adj2}",
)
_CLOSINGS = (
    "Let me know if you would like more detail on {kw}.",
    "I hope this helps.",
    "Feel free to ask a follow up question.",
    "Happy to go deeper on any of these points.",
)
_CLOSINGS_NO_TOPIC = ("I hope this helps.", "Feel free to ask a follow up question.")

_STOPWORD_TEXT = """
    a about above after again against all also always am an and any are around as at be because been
    before being below between both but by can cannot could did do does doing done down during each
    else even ever every few for from further get gets getting give given go going good got had has
    have having he her here hers herself him himself his how however if in into is it its itself just
    know let like likely made make makes many may me might mine more most much must my myself need
    needs never new no nor not now of off often on once one only or other others our ours ourselves
    out over own please quite rather really same say says see shall she should show since so some
    something such tell than thank thanks that the their theirs them themselves then there these they
    thing things think this those though through thus to too under until up upon us use used using
    very want wants was way we well were what whatever when where whether which while who whom whose
    why will with within without would write yes yet you your yours yourself yourselves explain
    describe help hello hi hey example examples question questions answer simple short brief long
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD_RE = re.compile(r"(?<![^\W\d_])[^\W\d_]{3,24}(?![^\W\d_])")  # whole words of 3 to 24 letters
_KEYWORD_SCAN_CHARS = 600  # keywords come from the start of the message: bounded cost on long prompts


@dataclass(frozen=True)
class _Style:
    connectives: tuple[str, ...]
    connective_percent: int
    extra_clause_percent: int
    layout: Literal["prose", "bullets", "steps"]


_STYLES: dict[str, _Style] = {
    "small": _Style(_CONNECTIVES_PLAIN, 15, 0, "prose"),
    "large": _Style(_CONNECTIVES_RICH, 35, 35, "prose"),
    "scout": _Style(_CONNECTIVES_PLAIN, 0, 15, "bullets"),
    "maverick": _Style(_CONNECTIVES_RICH, 0, 25, "steps"),
}


def _style_for(model: str) -> _Style:
    name = model.lower()
    if "maverick" in name:
        return _STYLES["maverick"]
    if "scout" in name:
        return _STYLES["scout"]
    if "70b" in name or "405b" in name or "90b" in name:
        return _STYLES["large"]
    return _STYLES["small"]


def _seed_for(model: str, messages: Sequence[Mapping[str, Any]], seed: int | None) -> int:
    canonical = json.dumps(
        [model, messages, seed], sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str
    )
    return int.from_bytes(hashlib.blake2b(canonical.encode(), digest_size=8).digest(), "big")


def _keywords(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """Up to three salient words of the last user message: its longest non-stopwords, in text order.

    Only the message's first ``_KEYWORD_SCAN_CHARS`` characters are scanned, to bound the cost.
    """
    for message in reversed(messages):
        if message.get("role") == "user":
            text, _ = content_text(message.get("content"))
            break
    else:
        return []
    text = text[:_KEYWORD_SCAN_CHARS]
    picked: list[str] = []
    seen: set[str] = set()
    # sorted() is stable: among words of the same length, the earlier one wins.
    for word in sorted(dict.fromkeys(_WORD_RE.findall(text)), key=len, reverse=True):
        key = word.lower()
        if key in _STOPWORDS or key in seen:
            continue
        seen.add(key)
        picked.append(word)
        if len(picked) == 3:
            break
    picked.sort(key=text.find)
    if picked and picked[0].istitle() and text.lstrip().startswith(picked[0]):
        picked[0] = picked[0].lower()  # only capitalised because it starts the message
    return picked


def _join(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


class _Writer:
    """Fills the templates; every choice comes from the request-seeded ``random.Random``.

    One ``getrandbits`` call per sentence, split with ``divmod`` into all of that sentence's choices,
    keeps generation cheap (``random.choice``/``sample`` cost a Python-level call each).
    """

    def __init__(self, rng: random.Random, style: _Style, keywords: list[str]) -> None:
        self._bits = rng.getrandbits
        self.style = style
        self.keywords = keywords

    def opening_and_closing(self) -> tuple[str, str]:
        r = self._bits(64)
        if not self.keywords:
            r, i = divmod(r, len(_OPENINGS_NO_TOPIC))
            r, j = divmod(r, len(_CLOSINGS_NO_TOPIC))
            return _OPENINGS_NO_TOPIC[i], _CLOSINGS_NO_TOPIC[j]
        r, i = divmod(r, len(_OPENINGS))
        r, j = divmod(r, len(_CLOSINGS))
        r, k = divmod(r, len(self.keywords))
        return _OPENINGS[i].format(topic=_join(self.keywords)), _CLOSINGS[j].format(kw=self.keywords[k])

    def body(self, *, connective: bool = True) -> str:
        """One body sentence, capitalised and ending with a full stop."""
        style = self.style
        r = self._bits(96)
        r, t = divmod(r, len(_BODY))
        r, n1 = divmod(r, len(_NOUNS))
        r, n2 = divmod(r, len(_NOUNS) - 1)
        r, v1 = divmod(r, len(_VERBS))
        r, v2 = divmod(r, len(_VERBS) - 1)
        r, a1 = divmod(r, len(_ADJECTIVES))
        r, a2 = divmod(r, len(_ADJECTIVES))
        r, k = divmod(r, len(self.keywords) or len(_FALLBACK_TOPICS))
        slots = {
            "noun": _NOUNS[n1],
            "noun2": _NOUNS[n2 + (n2 >= n1)],  # never the same noun twice
            "verb": _VERBS[v1],
            "verb2": _VERBS[v2 + (v2 >= v1)],
            "adj": _ADJECTIVES[a1],
            "adj2": _ADJECTIVES[a2],
            "kw": self.keywords[k] if self.keywords else _FALLBACK_TOPICS[k],
        }
        sentence = _BODY[t].format_map(slots)
        r, x = divmod(r, 100)
        r, e = divmod(r, len(_RICH_EXTRA))
        if x < style.extra_clause_percent:
            sentence = sentence[:-1] + ", " + _RICH_EXTRA[e].format_map(slots) + "."
        r, c = divmod(r, 100)
        r, w = divmod(r, len(style.connectives))
        if connective and c < style.connective_percent:
            sentence = style.connectives[w] + ", " + sentence[0].lower() + sentence[1:]
        return sentence[0].upper() + sentence[1:]


def _answer_tokens(writer: _Writer, target: int, limit: int) -> tuple[list[str], bool]:
    """The answer's first ``limit`` tokens (or all of them) and whether the answer is longer than that.

    The natural answer is an opening, body sentences until about ``target`` tokens, and a closing.
    Generation stops as soon as ``limit`` tokens exist, which gives the same tokens as cutting the
    natural answer. Every piece after the first starts with whitespace and every piece ends with a
    full stop or a colon, so tokenizing piece by piece equals tokenizing the joined text (tested).
    """
    layout = writer.style.layout
    opening, closing = writer.opening_and_closing()
    if layout == "bullets":
        opening = opening[:-1] + ". Key points:"
    elif layout == "steps":
        opening = opening[:-1] + ". Here is how to approach it:"
    closing = ("\n\n" if layout != "prose" else " ") + closing
    closing_tokens = tokenize(closing)
    budget = target - len(closing_tokens)
    tokens = tokenize(opening)
    index = 0
    while index == 0 or len(tokens) < budget:
        if len(tokens) >= limit:
            return tokens[:limit], True
        if layout == "bullets":
            piece = "\n- " + writer.body(connective=False)
        elif layout == "steps":
            ordinal = _ORDINALS[index] if index < len(_ORDINALS) else "Then"
            sentence = writer.body(connective=False)
            piece = ("\n\n" if index == 0 else " ") + ordinal + ", " + sentence[0].lower() + sentence[1:]
        else:
            piece = ("\n\n" if index and index % 3 == 0 else " ") + writer.body()
        tokens += tokenize(piece)
        index += 1
    tokens += closing_tokens
    if len(tokens) > limit:
        return tokens[:limit], True
    return tokens, False


def complete(
    *,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    max_tokens: int | None,
    temperature: float | None = None,
    seed: int | None = None,
) -> Completion:
    """Simulate a chat completion.

    Deterministic: the same ``(model, messages, seed)`` always gives the same :class:`Completion`;
    ``temperature`` is accepted for API compatibility and does not change the answer. ``max_tokens``
    is the caller's limit (an int >= 1) or ``None`` for the natural length, capped at
    ``MAX_COMPLETION_TOKENS``; an answer longer than the limit is cut at exactly that many tokens
    with ``stop_reason="length"``. Raises ``ValueError`` when ``max_tokens`` is not ``None`` or an
    int >= 1, or when a message is malformed (see :func:`count_message_tokens`).
    """
    if max_tokens is None:
        limit = MAX_COMPLETION_TOKENS
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an integer >= 1, not {max_tokens!r}")
    else:
        limit = max_tokens
    prompt_tokens = count_message_tokens(messages)

    rng = random.Random(_seed_for(model, messages, seed))  # noqa: S311 - simulated text, not security
    target = MIN_NATURAL_TOKENS + rng.getrandbits(32) % (MAX_NATURAL_TOKENS - MIN_NATURAL_TOKENS + 1)
    writer = _Writer(rng, _style_for(model), _keywords(messages))
    tokens, cut = _answer_tokens(writer, target, limit)
    return Completion(
        text="".join(tokens),
        tokens=tokens,
        completion_tokens=len(tokens),
        prompt_tokens=prompt_tokens,
        stop_reason="length" if cut else "stop",
    )


def iter_chunks(completion: Completion, chunk_tokens: int = 4) -> Iterator[str]:
    """Yield the completion's text in pieces of ``chunk_tokens`` tokens (the last may be shorter).

    The pieces concatenate to ``completion.text``. Raises ``ValueError`` if ``chunk_tokens < 1``.
    """
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be an integer >= 1, not {chunk_tokens!r}")
    tokens = completion.tokens
    for start in range(0, len(tokens), chunk_tokens):
        yield "".join(tokens[start : start + chunk_tokens])
