"""Input that cannot be stored or answered safely, refused at the boundary with a clear reason.

One home for the checks every entry needs: JSON bodies (nesting, lone surrogates, NUL,
numbers no column can hold), whole numbers in query strings and headers, NUL in URLs.
Every refusal is a `ValueError` whose message says what and where, for a 400.
"""

from __future__ import annotations

import json
import math
from typing import Any

# Deeper JSON than any request of ours needs; Python's parser recurses per level and a
# deeply nested body raised RecursionError (a 500) before this check.
MAX_JSON_DEPTH = 64
# What a BigIntegerField (PostgreSQL bigint, SQLite integer) holds.
MAX_INT = 2**63 - 1
MIN_INT = -(2**63)


class InputError(ValueError):
    """Refused input; the message says what is wrong and where."""


def _depth_ok(text: str) -> bool:
    """Whether brackets nest at most MAX_JSON_DEPTH deep (strings skipped): linear, no
    recursion, so a body of a million `[` costs one pass."""
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return False
        elif char in "]}":
            depth -= 1
    return True


def _no_constant(name: str):
    raise InputError(f"{name} is not a JSON number")


def _int(digits: str) -> int:
    # Python refuses int() of more than 4,300 digits with a ValueError of its own.
    if len(digits.lstrip("-")) > 19:
        raise InputError(f"the number {digits[:20]}… is out of range")
    return int(digits)


def loads(text: str | bytes, what: str = "the body", verb: str = "is") -> Any:
    """Parse JSON and check it (see `check`); InputError naming the problem (`what`, and
    `verb` to agree with it: "Tags are")."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{what} {verb} not UTF-8") from None
    if not _depth_ok(text):
        raise InputError(
            f"{what} nest{'' if verb == 'are' else 's'} deeper than {MAX_JSON_DEPTH} levels"
        )
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_int=_int)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{what} {verb} not valid JSON ({exc.msg} at character {exc.pos + 1})"
        ) from exc
    return check(data, what)


def check(value: Any, where: str = "the body") -> Any:
    """Refuse what no column or later encoding can hold: strings with NUL or lone UTF-16
    surrogates (they cannot be encoded as UTF-8), numbers beyond 64-bit integers or not
    finite. Returns the value unchanged."""
    stack = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            check_text(item, path)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not MIN_INT <= item <= MAX_INT:
                raise InputError(f"{path}: the number is out of range")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InputError(f"{path}: the number is out of range")
        elif isinstance(item, dict):
            for key, child in item.items():
                check_text(key, path)
                stack.append((child, f"{path}.{key[:40]}"))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{n}]") for n, child in enumerate(item))
    return value


def check_text(text: str, where: str) -> str:
    if "\x00" in text:
        raise InputError(f"{where}: control characters are not allowed (it contains a NUL)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{where}: contains a lone UTF-16 surrogate (not a character)") from None
    return text


def number_or_none(raw: str, *, low: int = 0, high: int = MAX_INT) -> int | None:
    """`whole_number`, or None where it refuses (for optional filters)."""
    try:
        return whole_number(raw, "", low=low, high=high)
    except InputError:
        return None


def whole_number(raw: str, what: str, *, low: int = 0, high: int = MAX_INT) -> int:
    """A whole number written in ASCII digits within [low, high]. `²` passes `isdigit()`
    and fails `int()`, and a 5,000-digit number fails `int()` too: both are refused here."""
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > len(str(high)):
        raise InputError(f"{what} must be a whole number from {low} to {high}")
    number = int(raw)
    if not low <= number <= high:
        raise InputError(f"{what} must be a whole number from {low} to {high}")
    return number
