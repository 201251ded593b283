"""The one bounded JSON loader of every TierLab API (the model API's bodies and the account API's
DRF parser): what a client sends is parsed only within limits, and every refusal is a 400 naming what
is wrong, never a 500.

Contract of :func:`json_loads_bounded`:
1. The body must be UTF-8 (strictly: ``json.loads`` on bytes would let an encoded lone surrogate
   through with ``surrogatepass``).
2. Nesting deeper than ``max_depth`` arrays/objects is refused *before* parsing: Python's ``json``
   recurses once per level and raises RecursionError (or, with a deep enough C stack, worse) on
   100k-deep input. The bracket count is a C-speed ``str.count``; the exact depth scan runs only when
   the count could exceed the limit.
3. Strings (keys and values) may not hold a lone surrogate (``"\\ud800"``: not Unicode, it cannot be
   stored or encoded later) nor NUL (``"\\u0000"``: PostgreSQL text refuses it). After rule 1 both can
   only come from ``\\u`` escapes, so the walk over the parsed value that finds the param path runs
   only when the text holds such an escape: a normal request pays one regex search.
4. ``NaN``/``Infinity`` are not JSON and are refused, as are integers over 4,300 digits (Python's own
   limit on int parsing).
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from core.errors import ApplicationError

MAX_DEPTH = 64

# A \u escape that may decode to a surrogate (D800-DFFF) or to NUL. An escaped backslash before "u"
# (``\\ud800``) also matches: that only costs the walk, which then finds nothing.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:[dD][89a-fA-F]|0000)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_SURROGATE_OR_NUL = re.compile("[\ud800-\udfff\x00]")


class JsonInputError(ApplicationError):
    """400: the body is not JSON TierLab accepts; ``extra["field"]`` is the JSON path at fault
    (``messages[0].content``) when there is one."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message, extra={"field": param} if param is not None else None)

    @property
    def param(self) -> str | None:
        return self.extra.get("field")


class RequestTooLarge(ApplicationError):
    """413: the body is over the endpoint's limit (TIERLAB_MAX_BODY_BYTES, or the partner ingest's)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"

    def __init__(self, limit: int):
        super().__init__(f"The request body is larger than {limit:,} bytes.")


def _no_constant(name: str) -> Any:
    raise JsonInputError(f"The request body is not valid JSON: {name} is not a JSON number.")


def _depth_exceeds(text: str, max_depth: int) -> bool:
    # Brackets inside strings do not nest: drop the strings, then the running sum of +1/-1 is the depth.
    brackets = _BRACKET.findall(_STRING.sub("", text))
    return max(accumulate(1 if b in "[{" else -1 for b in brackets), default=0) > max_depth


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    # A bad key is shown escaped, never echoed raw.
    key = key.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\u0000")
    return f"{parent}.{key}" if parent else key


def _bad_string_path(value: Any) -> tuple[str, str] | None:
    """(path, what) of the first string holding a lone surrogate or NUL, iteratively (no recursion)."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            found = _SURROGATE_OR_NUL.search(item)
            if found:
                return where, "NUL" if found.group() == "\x00" else "a lone surrogate"
        elif isinstance(item, dict):
            for key, inner in reversed(item.items()):
                path = _path(where, key)
                found = _SURROGATE_OR_NUL.search(key)
                if found:
                    return path, "NUL" if found.group() == "\x00" else "a lone surrogate"
                stack.append((path, inner))
        elif isinstance(item, list):
            stack.extend((_path(where, index), inner) for index, inner in reversed(list(enumerate(item))))
    return None


def json_loads_bounded(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of ``raw`` under the rules above; raises JsonInputError (400) otherwise.
    An empty body is ``None``."""
    from_bytes = isinstance(raw, bytes)
    if from_bytes:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonInputError(f"The request body is not valid UTF-8 (byte {exc.start}).") from exc
    else:
        text = raw
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        return None
    if text.count("[") + text.count("{") > max_depth and _depth_exceeds(text, max_depth):
        raise JsonInputError(f"The request body nests arrays/objects more than {max_depth} levels deep.")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError as exc:  # a guard: the scan above refuses this first
        raise JsonInputError(f"The request body nests arrays/objects more than {max_depth} levels deep.") from exc
    except ValueError as exc:
        raise JsonInputError(f"The request body is not valid JSON: {exc}.") from exc
    # Strictly decoded bytes hold no raw surrogate, and JSON refuses a raw NUL: only escapes remain.
    if _SUSPECT_ESCAPE.search(text) or (not from_bytes and _SURROGATE_OR_NUL.search(text)):
        bad = _bad_string_path(value)
        if bad is not None:
            where, what = bad
            raise JsonInputError(
                f"'{where or 'body'}' holds {what}: strings must be valid Unicode without NUL.", param=where or None
            )
    return value
