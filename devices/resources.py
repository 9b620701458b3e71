"""Resource definitions of a connector (SPEC.md section 4) and the check of written values.

Pure functions. A definition: {"format": "string"|"number"|"boolean", "unit": str,
"settable": bool, "allowed": [values or "low-high" ranges], "initial": value or null}.
"""

from __future__ import annotations

import math
import re
from typing import Any

FORMATS = ("string", "number", "boolean")
ALIAS_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
RANGE_RE = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)\s*")
MAX_RESOURCES = 500
TRUE, FALSE = ("true", "1"), ("false", "0")


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def value_error(definition: dict, raw: str) -> str | None:
    """Why `raw` cannot be stored for this definition, or None."""
    kind = definition.get("format", "string")
    if kind == "number":
        number = _number(raw)
        if number is None:
            return f"{raw[:40]!r} is not a number"
    elif kind == "boolean" and raw.lower() not in TRUE + FALSE:
        return f"{raw[:40]!r} is not a boolean (true/false/1/0)"
    allowed = definition.get("allowed") or []
    if allowed and not _allowed(kind, raw, allowed):
        return f"{raw[:40]!r} is not one of the allowed values ({', '.join(map(str, allowed))})"
    return None


def _allowed(kind: str, raw: str, allowed: list) -> bool:
    for entry in allowed:
        text = str(entry)
        if kind == "number":
            number = _number(raw)
            if match := RANGE_RE.fullmatch(text):
                if float(match.group(1)) <= number <= float(match.group(2)):
                    return True
            elif _number(text) == number:
                return True
        elif raw == text or (kind == "boolean" and raw.lower() == text.lower()):
            return True
    return False


def check_definitions(data: Any) -> dict[str, dict]:
    """Validate a whole resources map; raises ValueError('<alias>.<field>: message')."""
    if not isinstance(data, dict):
        raise ValueError("resources: give an object of alias → definition")
    if len(data) > MAX_RESOURCES:
        raise ValueError(f"resources: at most {MAX_RESOURCES} aliases")
    return {alias: check_definition(alias, definition) for alias, definition in data.items()}


def check_definition(alias: Any, definition: Any) -> dict:
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias):
        raise ValueError(f"{str(alias)[:40]!r}: an alias is 1-64 letters, digits, '_', '.' or '-'")
    if not isinstance(definition, dict):
        raise ValueError(f"{alias}: give an object")
    unknown = set(definition) - {"format", "unit", "settable", "allowed", "initial"}
    if unknown:
        raise ValueError(f"{alias}.{sorted(unknown)[0]}: unknown field")
    kind = definition.get("format", "string")
    if kind not in FORMATS:
        raise ValueError(f"{alias}.format: use string, number or boolean")
    unit = definition.get("unit", "")
    if not isinstance(unit, str) or len(unit) > 32:
        raise ValueError(f"{alias}.unit: text of at most 32 characters")
    settable = definition.get("settable", False)
    if not isinstance(settable, bool):
        raise ValueError(f"{alias}.settable: true or false")
    allowed = definition.get("allowed", [])
    if not isinstance(allowed, list) or len(allowed) > 100:
        raise ValueError(f"{alias}.allowed: a list of at most 100 values or ranges")
    for entry in allowed:
        if kind == "number" and not (
            (isinstance(entry, int | float) and not isinstance(entry, bool))
            or (
                isinstance(entry, str) and (RANGE_RE.fullmatch(entry) or _number(entry) is not None)
            )
        ):
            raise ValueError(f"{alias}.allowed: {entry!r} is not a number or a range like 9-11")
        if kind != "number" and not isinstance(entry, str | bool):
            raise ValueError(f"{alias}.allowed: {entry!r} must be text")
    clean = {
        "format": kind,
        "unit": unit,
        "settable": settable,
        "allowed": allowed,
        "initial": None,
    }
    initial = definition.get("initial")
    if initial is not None:
        text = str(initial).lower() if isinstance(initial, bool) else str(initial)
        if reason := value_error(clean, text):
            raise ValueError(f"{alias}.initial: {reason}")
        clean["initial"] = text
    return clean
