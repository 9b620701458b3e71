"""Checks of device input shared by the Devices pages, the identity API and the CSV import.

Each raises `ValueError` with a message that can be shown as it is.
"""

from __future__ import annotations

from typing import Any

from connector import safeinput
from connector.identity import IdentityFormat, identity_error
from connector.models import now_us
from provisioning.pki import CertInfo, PKIError, cert_info, load_certificates

MAX_TAGS = 20
MAX_TAG_NAME = 64
MAX_TAG_VALUE = 256
# Murano's auth.expire is in microseconds; a value below this is surely seconds or millis.
MIN_PLAUSIBLE_EXPIRE_US = 10**15


def check_identity(identity: Any, fmt: IdentityFormat) -> str:
    if reason := identity_error(identity, fmt):
        raise ValueError(reason[0].upper() + reason[1:] + f" (expected {fmt.describe()}).")
    return identity


def check_tags(tags: Any) -> list[dict[str, str]]:
    """A list of at most 20 `{"name", "value"}` objects with distinct names."""
    if not isinstance(tags, list):
        raise ValueError('Tags must be a list like [{"name": "group", "value": "g1"}].')
    if len(tags) > MAX_TAGS:
        raise ValueError(f"At most {MAX_TAGS} tags per device.")
    seen: set[str] = set()
    clean = []
    for number, tag in enumerate(tags, start=1):
        if not isinstance(tag, dict) or set(tag) != {"name", "value"}:
            raise ValueError(f'Tag {number} must be an object with exactly "name" and "value".')
        name, value = tag["name"], tag["value"]
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"Tag {number}: the name must be non-empty text.")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"Tag {number} ({name}): the value must be text or a number.")
        value = str(value)
        if len(name) > MAX_TAG_NAME or len(value) > MAX_TAG_VALUE:
            raise ValueError(
                f"Tag {number} ({name[:20]}): names are at most {MAX_TAG_NAME} and values at "
                f"most {MAX_TAG_VALUE} characters."
            )
        if any(ord(c) < 32 or ord(c) == 127 for c in name) or "\x00" in value:
            raise ValueError(f"Tag {number}: control characters are not allowed.")
        if name in seen:
            raise ValueError(f"Tag “{name}” appears twice.")
        seen.add(name)
        clean.append({"name": name, "value": value})
    return clean


def parse_tags_json(text: str) -> list[dict[str, str]]:
    if not text.strip():
        return []
    try:
        data = safeinput.loads(text, "Tags", "are")
    except safeinput.InputError as exc:
        raise ValueError(f"{str(exc)[0].upper()}{str(exc)[1:]}.") from exc
    return check_tags(data)


def parse_tags_lines(text: str) -> list[dict[str, str]]:
    """Tags typed in a form: one `name=value` per line."""
    tags = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"Line {number}: write each tag as name=value.")
        tags.append({"name": name.strip(), "value": value.strip()})
    return check_tags(tags)


def check_device_certificate(pem: str, identity: str) -> CertInfo:
    """One PEM certificate whose subject CN is the identity."""
    try:
        certs = load_certificates(pem)
    except PKIError as exc:
        raise ValueError(str(exc)) from exc
    if len(certs) != 1:
        raise ValueError("Give exactly one certificate for the device.")
    info = cert_info(certs[0])
    if info.common_name != identity:
        raise ValueError(
            f"The certificate's CN is “{info.common_name}”, not the identity “{identity}”."
        )
    return info


def check_expire(value: Any, now: int | None = None) -> int:
    """An activation deadline in µs since the epoch, in the future."""
    now = now_us() if now is None else now
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expire must be a whole number of microseconds since the epoch.")
    if 0 < value < MIN_PLAUSIBLE_EXPIRE_US:
        raise ValueError(
            f"expire is in microseconds since the epoch; {value} looks like seconds or "
            "milliseconds."
        )
    if value <= now:
        raise ValueError("expire is in the past.")
    return value
