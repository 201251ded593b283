"""TierLab's deterministic tokenizer: BPE-like token counts without a vocabulary file or a download.

The model API bills and rate-limits by tokens, so the count must be cheap, deterministic and stable
across releases. The scheme imitates what byte-pair-encoding tokenizers (tiktoken's ``cl100k``,
Llama 3's ``tiktoken`` variant) do to text, with one regular expression whose matches *are* the
tokens, scanned left to right:

* **English contractions** ``'s 't 'd 'm 're 've 'll`` are one token each (``don't`` -> ``don``,
  ``'t``).
* **Latin-script words** (ASCII letters and Latin-1/Latin Extended letters such as ``é``) carry their
  single leading space, as BPE tokens do (``" hello"``). A word of up to ``WORD_MAX`` (6) letters is
  one token; a longer word is cut into pieces of ``PIECE_MAX`` (5) letters, left to right, until at
  most ``WORD_MAX`` letters remain, which make the last piece (``" tokenization"`` ->
  ``" token"``, ``"izati"``, ``"on"``). Ordinary English prose comes out near 4 characters per token.
* **CJK** ideographs, kana and hangul are one token per character; letters of **other scripts**
  (Greek, Cyrillic, Arabic, ...) are pieces of up to 3 letters.
* **Numbers** are groups of up to 3 digits (``"2025"`` -> ``"202"``, ``"5"``).
* **ASCII punctuation and symbols** (including ``_``) are pieces of up to 2 characters, with an
  optional leading space; any other symbol (an emoji, a combining mark) is one token per code point.
* **Whitespace**: a newline, or a run of up to 3 newlines with up to 3 spaces or tabs before it, is
  one token (``"\\n\\n"`` is one token). Other whitespace runs are pieces of up to 4 characters, and
  the last space before a word is left to that word (``"   x"`` -> ``"  "``, ``" x"``).

Guarantees (all tested): every character belongs to exactly one token, so ``"".join(tokenize(t)) ==
t``; ``count_tokens(t) == len(tokenize(t))``; the empty string has 0 tokens; tokenization is
*prefix-stable*: the text of the first k tokens tokenizes to exactly those k tokens, which is what
lets a completion be cut at exactly ``max_tokens`` tokens.

Chat messages (:func:`count_message_tokens`) follow OpenAI's documented counting: each message costs
``TOKENS_PER_MESSAGE`` (4) for its role and delimiters plus its content's tokens (plus
``TOKENS_PER_NAME`` (1) and the name's tokens when it has a ``name``; tool calls count their function
name and arguments); each image part costs a fixed ``IMAGE_TOKENS`` (85, OpenAI's low-detail cost);
and every request adds ``REPLY_PRIMER_TOKENS`` (3) for the assistant reply's primer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "IMAGE_TOKENS",
    "PIECE_MAX",
    "REPLY_PRIMER_TOKENS",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "WORD_MAX",
    "content_text",
    "count_message_tokens",
    "count_tokens",
    "tokenize",
]

WORD_MAX = 6
"""A Latin-script word of up to this many letters is a single token."""
PIECE_MAX = 5
"""Longer words are cut into pieces of this many letters (must be > WORD_MAX / 2 for prefix stability)."""

TOKENS_PER_MESSAGE = 4
TOKENS_PER_NAME = 1
REPLY_PRIMER_TOKENS = 3
IMAGE_TOKENS = 85

_IMAGE_PART_TYPES = frozenset({"image_url", "image", "input_image"})

_LATIN = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"
_CJK = "\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002ffff"
_ASCII_PUNCT = r"!-/:-@\[-`{-~"  # every printable ASCII character that is not a letter or digit

# Alternatives are tried in order at each position; the first that matches is the token.
_TOKEN_RE = re.compile(
    "|".join(
        (
            r"'(?i:[sdmt]|ll|ve|re)",  # English contractions
            rf" ?[{_LATIN}]{{1,{WORD_MAX}}}(?![{_LATIN}])",  # a whole short word
            rf" ?[{_LATIN}]{{1,{PIECE_MAX}}}",  # a piece of a long word
            rf" ?[{_CJK}]",  # one CJK / kana / hangul character
            rf" ?(?:(?![{_LATIN}{_CJK}])[^\W\d_]){{1,3}}",  # other scripts (and other numerals)
            r" ?\d{1,3}",  # digits, in groups of three
            rf" ?[{_ASCII_PUNCT}]{{1,2}}",  # ASCII punctuation, in pairs
            r" ?[^\s\w]",  # any other symbol: one per code point
            r"[^\S\r\n]{0,3}[\r\n]{1,3}",  # newlines (with the horizontal space before them)
            r"(?:(?! \S)\s){1,4}",  # other whitespace, leaving a space before a word to that word
            r"\s",  # (unreachable: a space before a word was taken above; kept so every character matches)
        )
    )
)
_findall = _TOKEN_RE.findall
_subn = _TOKEN_RE.subn  # counts matches without building the list: ~20% faster than len(findall)


def tokenize(text: str) -> list[str]:
    """Split ``text`` into tokens (see the module docstring for the scheme).

    Contract: deterministic; ``"".join(tokenize(text)) == text``; ``tokenize("") == []``; prefix-stable
    (``tokenize("".join(tokenize(text)[:k])) == tokenize(text)[:k]`` for every k).
    """
    return _findall(text)


def count_tokens(text: str) -> int:
    """The number of tokens in ``text``; always ``len(tokenize(text))``, 0 for the empty string."""
    return _subn("", text)[1] if text else 0


def content_text(content: Any) -> tuple[str, int]:
    """Flatten a chat message ``content`` into ``(text, image_count)``.

    ``content`` is a string, ``None`` (e.g. an assistant message that only calls tools), one content
    part (a mapping) or a list of parts: ``{"type": "text", "text": ...}`` parts contribute their text
    (joined with newlines), image parts (``image_url``/``image``/``input_image``) are counted, other
    parts contribute their ``text`` if they have one. Anything else raises ``ValueError``.
    """
    if content is None:
        return "", 0
    if isinstance(content, str):
        return content, 0
    parts: Iterable[Any]
    if isinstance(content, Mapping):
        parts = (content,)
    elif isinstance(content, list | tuple):
        parts = content
    else:
        raise ValueError(f"message content must be a string or a list of parts, not {type(content).__name__}")
    texts: list[str] = []
    images = 0
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, Mapping):
            raise ValueError(f"content parts must be objects, not {type(part).__name__}")
        if part.get("type") in _IMAGE_PART_TYPES:
            images += 1
            continue
        text = part.get("text")
        if isinstance(text, str):
            texts.append(text)
    return "\n".join(texts), images


def count_message_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Prompt tokens of a chat request: per-message overhead + content + images + the reply primer.

    Each message is a mapping with ``role`` and ``content`` (see :func:`content_text` for content
    shapes), optionally ``name`` and ``tool_calls`` (``[{"function": {"name", "arguments"}}]``).
    Returns ``TOKENS_PER_MESSAGE`` per message + the content's tokens + ``IMAGE_TOKENS`` per image +
    ``TOKENS_PER_NAME`` + the name's tokens for a named message + the tool calls' function names and
    arguments, plus ``REPLY_PRIMER_TOKENS`` once. Raises ``ValueError`` for a message that is not a
    mapping or has content of an unsupported type.
    """
    total = REPLY_PRIMER_TOKENS
    for message in messages:
        if not isinstance(message, Mapping):
            raise ValueError(f"each message must be an object, not {type(message).__name__}")
        content = message.get("content")
        if isinstance(content, str):  # the common case, kept short
            total += TOKENS_PER_MESSAGE + (_subn("", content)[1] if content else 0)
        else:
            text, images = content_text(content)
            total += TOKENS_PER_MESSAGE + count_tokens(text) + images * IMAGE_TOKENS
        name = message.get("name")
        if isinstance(name, str) and name:
            total += TOKENS_PER_NAME + count_tokens(name)
        tool_calls = message.get("tool_calls")
        if isinstance(tool_calls, list):
            for call in tool_calls:
                function = call.get("function") if isinstance(call, Mapping) else None
                if isinstance(function, Mapping):
                    for key in ("name", "arguments"):
                        value = function.get(key)
                        if isinstance(value, str):
                            total += count_tokens(value)
    return total
