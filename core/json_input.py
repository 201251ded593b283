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
   stored or encoded later) nor NUL (``"\\u0000"``: PostgreSQL text refuses it); integers must fit
   ``max_int`` (a bigint column) and numbers a double (``1e999`` would be infinity). After rule 1 a
   bad string can only come from a ``\\u`` escape and a bad number needs 19 digits or a 3-digit
   exponent, so the walk over the parsed value that finds the param path (``messages[0].content``)
   runs only when one regex search finds such text: a normal request pays that one search.
4. ``NaN``/``Infinity`` are not JSON and are refused, as are integers over 4,300 digits (Python's own
   limit on int parsing).
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

from core.errors import ApplicationError

MAX_DEPTH = 64

MAX_INT = 2**63 - 1  # what a bigint column holds: a larger integer could never be stored

# What may decode to a bad value: a \u escape of a surrogate (D800-DFFF) or NUL, a run of 19 digits
# (an integer that may pass MAX_INT, or a long mantissa), a 3-digit exponent (a double's overflow).
# Matches inside strings, or an escaped backslash before "u" (``\\ud800``), only cost the walk.
_SUSPECT = re.compile(r"\\u(?:[dD][89a-fA-F]|0000)|\d{19}|[eE][+]?\d{3}")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_SURROGATE_OR_NUL = re.compile("[\ud800-\udfff\x00]")


class JsonInputError(ApplicationError):
    """400: the body is not JSON TierLab accepts; ``extra["field"]`` is the JSON path at fault
    (``messages[0].content``) when there is one."""

    status = 400
    type = "invalid_request_error"
    code = "invalid"  # the account API's validation code (core.api); the model API re-raises its own

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


def _fault(item: Any, max_int: int) -> str | None:
    """What is wrong with one parsed value (a key or a leaf), or None."""
    if isinstance(item, str):
        found = _SURROGATE_OR_NUL.search(item)
        if found:
            return "holds NUL" if found.group() == "\x00" else "holds a lone surrogate"
    elif isinstance(item, int) and not isinstance(item, bool):
        if not -max_int <= item <= max_int:
            return f"is an integer outside -{max_int} to {max_int}"
    elif isinstance(item, float) and math.isinf(item):
        return "is a number outside the range of a double"
    return None


def _first_fault(value: Any, max_int: int) -> tuple[str, str] | None:
    """(path, what) of the first bad key or leaf in document order, iteratively (no recursion)."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict):
            for key, inner in reversed(item.items()):
                path = _path(where, key)
                fault = _fault(key, max_int)
                if fault:
                    return path, fault
                stack.append((path, inner))
        elif isinstance(item, list):
            stack.extend((_path(where, index), inner) for index, inner in reversed(list(enumerate(item))))
        else:
            fault = _fault(item, max_int)
            if fault:
                return where, fault
    return None


def json_loads_bounded(raw: bytes | str, *, max_depth: int = MAX_DEPTH, max_int: int = MAX_INT) -> Any:
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
    if _SUSPECT.search(text) or (not from_bytes and _SURROGATE_OR_NUL.search(text)):
        fault = _first_fault(value, max_int)
        if fault is not None:
            where, what = fault
            raise JsonInputError(f"'{where or 'body'}' {what}.", param=where or None)
    return value
