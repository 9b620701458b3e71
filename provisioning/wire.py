"""Wire format of the HTTP Device API: form bodies as Murano clients really send them.

Pure functions. `WireError` carries the status code and a one-line reason.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote, unquote_to_bytes

MAX_BODY = 1024 * 1024
MAX_ALIAS = 64
# Points one record request may carry (a 1 MiB body holds about 80,000 short ones).
MAX_RECORD_POINTS = 10_000

FORM_TYPE = "application/x-www-form-urlencoded"
# What a properly form-encoded value can contain. murano-client sends values raw (e.g. JSON
# with quotes, braces and spaces): a value with any other character is taken as it is.
_ENCODED = re.compile(r"[A-Za-z0-9._~\-+%*!'(),/:;@?$]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class WireError(ValueError):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def is_form(content_type: str) -> bool:
    main, _, params = content_type.partition(";")
    if main.strip().lower() != FORM_TYPE:
        return False
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True


def _decode(part: str, what: str) -> str:
    if not _ENCODED.fullmatch(part):
        return part  # sent raw
    if _BAD_ESCAPE.search(part):
        raise WireError(400, f"bad percent-encoding in {what}")
    try:
        return unquote_to_bytes(part.replace("+", " ")).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(400, f"{what} is not UTF-8 after percent-decoding") from None


def parse_pairs(body: bytes) -> list[tuple[str, str]]:
    """`a=1&b=2` into pairs, in order; keys and values decoded (or taken raw, see above)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(400, "the body is not UTF-8") from None
    pairs = []
    for item in text.split("&"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        name = _decode(key, "a name")
        pairs.append((name, _decode(value, f"the value of {name[:MAX_ALIAS]}") if sep else ""))
    return pairs


def parse_fields(body: bytes) -> dict[str, str]:
    """A form whose fields each come once (`id=a&id=b` is refused: which would count?)."""
    fields: dict[str, str] = {}
    for name, value in parse_pairs(body):
        if name in fields:
            raise WireError(400, f"{name[:MAX_ALIAS]} appears twice")
        fields[name] = value
    return fields


def parse_query_aliases(query: str) -> list[str]:
    """`?a1&a2` (read) into alias names; `a1=` forms are tolerated."""
    aliases = []
    for item in query.split("&"):
        if not item:
            continue
        aliases.append(_decode(item.partition("=")[0], "an alias"))
    return aliases


def check_alias(alias: str) -> str:
    if not alias:
        raise WireError(400, "empty alias")
    if len(alias) > MAX_ALIAS:
        raise WireError(400, f"alias longer than {MAX_ALIAS} characters")
    if _CONTROL.search(alias):
        raise WireError(400, "alias contains control characters")
    return alias


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def encode_pairs(pairs) -> str:
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)


def check_value(alias: str, value: str) -> str:
    if "\x00" in value:
        raise WireError(400, f"the value of {alias} contains a NUL character")
    return value


def parse_write(body: bytes) -> list[tuple[str, str]]:
    pairs = parse_pairs(body)
    if not pairs:
        raise WireError(400, "nothing to write: send alias=value pairs")
    seen = set()
    for alias, value in pairs:
        check_alias(alias)
        check_value(alias, value)
        if alias in seen:
            raise WireError(400, f"alias {alias} appears twice")
        seen.add(alias)
    return pairs


def parse_record(body: bytes, now_s: int, max_future_s: int = 86400) -> dict[str, list]:
    """`alias=a&<ts>=<v>&<ts>=<v>&alias=b&…` into {alias: [(ts_seconds, value), …]}.

    Linear in the body: each alias keeps a set of its timestamps. At most MAX_RECORD_POINTS
    points per request."""
    pairs = parse_pairs(body)
    if not pairs:
        raise WireError(400, "nothing to record: send alias=<alias>&<timestamp>=<value>")
    points: dict[str, list] = {}
    seen: dict[str, set[int]] = {}
    current = None
    count = 0
    for key, value in pairs:
        if key == "alias":
            current = check_alias(value)
            points.setdefault(current, [])
            seen.setdefault(current, set())
            continue
        if current is None:
            raise WireError(400, "a timestamp comes before any alias=")
        if not key.isascii() or not key.isdigit():
            raise WireError(400, f"timestamp {key[:20]!r} is not whole unix seconds")
        if len(key.lstrip("0")) > len(str(now_s + max_future_s)):
            raise WireError(400, f"timestamp {key[:20]}… is more than a day in the future")
        ts = int(key)
        if ts > now_s + max_future_s:
            raise WireError(400, f"timestamp {ts} is more than a day in the future")
        if ts in seen[current]:
            raise WireError(400, f"timestamp {ts} appears twice for {current}")
        count += 1
        if count > MAX_RECORD_POINTS:
            raise WireError(413, f"at most {MAX_RECORD_POINTS} points per request")
        seen[current].add(ts)
        points[current].append((ts, check_value(current, value)))
    if not any(points.values()):
        raise WireError(400, "no timestamp=value pairs to record")
    return points


# --- MQTT payloads (SPEC.md section 8) ------------------------------------------------------

# A `$resource.batch` timestamp below this is seconds, else microseconds.
SECONDS_BELOW = 10**11


def mqtt_value(alias: str, payload: bytes) -> str:
    """The raw value of a `$resource/<alias>` PUBLISH: UTF-8 text."""
    try:
        return check_value(alias, payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise WireError(400, f"the value of {alias} is not UTF-8 text") from None


def _batch_text(alias: str, value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return check_value(alias, value)
    if isinstance(value, int | float):
        return json.dumps(value)
    raise WireError(400, f"the value of {alias} must be text, a number or a boolean")


def parse_batch(payload: bytes, now_us: int, max_future_s: int = 86400) -> dict[str, list]:
    """`[{"timestamp": t, "values": {alias: v, …}}, …]` into {alias: [(µs, text), …]}; `t` in
    µs, or in seconds when below 10^11. The record rules of the HTTP API: no point more
    than a day ahead, none twice, at most MAX_RECORD_POINTS."""
    try:
        entries = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise WireError(400, "$resource.batch: the payload is not JSON") from None
    if not isinstance(entries, list) or not entries:
        raise WireError(400, '$resource.batch: send [{"timestamp": t, "values": {…}}, …]')
    points: dict[str, list] = {}
    seen: dict[str, set[int]] = {}
    count = 0
    limit = now_us + max_future_s * 1_000_000
    for index, entry in enumerate(entries):
        where = f"$resource.batch[{index}]"
        if not isinstance(entry, dict) or set(entry) != {"timestamp", "values"}:
            raise WireError(400, f"{where}: an object with timestamp and values only")
        ts, values = entry["timestamp"], entry["values"]
        if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
            raise WireError(400, f"{where}.timestamp: a whole number of seconds or µs")
        ts = ts * 1_000_000 if ts < SECONDS_BELOW else ts
        if ts > limit:
            raise WireError(400, f"{where}.timestamp: more than a day in the future")
        if not isinstance(values, dict) or not values:
            raise WireError(400, f"{where}.values: an object of alias: value")
        for alias, value in values.items():
            check_alias(alias)
            if ts in seen.setdefault(alias, set()):
                raise WireError(400, f"{where}: timestamp {ts} appears twice for {alias}")
            count += 1
            if count > MAX_RECORD_POINTS:
                raise WireError(413, f"at most {MAX_RECORD_POINTS} points per batch")
            seen[alias].add(ts)
            points.setdefault(alias, []).append((ts, _batch_text(alias, value)))
    return points
