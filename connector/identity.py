"""Device identity formats: the one check used by whitelisting, CSV import and activation.

Pure functions, no database. `identity_error(identity, fmt)` returns None when the identity is
valid for the format, else a short reason a person can act on.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from django.db import models


class IdentityType(models.TextChoices):
    OPAQUE = "opaque", "Opaque (any characters)"
    BASE10 = "base10", "Base 10 (digits)"
    BASE16 = "base16", "Base 16 (hexadecimal)"
    UUID_V4 = "uuid_v4", "UUID v4"
    MAC_COLON = "mac:colon", "MAC address, colon separated (00:14:22:01:23:45)"
    MAC_HYPHEN = "mac:hyphen", "MAC address, hyphen separated (00-14-22-01-23-45)"
    MAC_NONE = "mac:none", "MAC address, no separator (001422012345)"


class Casing(models.TextChoices):
    MIXED = "mixed", "Mixed"
    LOWER = "lower", "Lower case"
    UPPER = "upper", "Upper case"


# Identities travel in URL paths, CSV cells, certificate CNs and log lines: keep them short.
MAX_IDENTITY_LENGTH = 128
MAX_PREFIX_LENGTH = 64

# Types whose length is fixed by the type itself (characters after the prefix).
FIXED_LENGTHS = {
    IdentityType.UUID_V4: 36,
    IdentityType.MAC_COLON: 17,
    IdentityType.MAC_HYPHEN: 17,
    IdentityType.MAC_NONE: 12,
}
HEX_TYPES = {IdentityType.BASE16, *FIXED_LENGTHS}

_HEX = "0-9a-fA-F"
_PATTERNS = {
    IdentityType.BASE10: (re.compile(r"[0-9]+"), "only the digits 0-9"),
    IdentityType.BASE16: (re.compile(rf"[{_HEX}]+"), "only hexadecimal digits 0-9 and a-f"),
    IdentityType.UUID_V4: (
        re.compile(
            rf"[{_HEX}]{{8}}-[{_HEX}]{{4}}-4[{_HEX}]{{3}}-[89abAB][{_HEX}]{{3}}-[{_HEX}]{{12}}"
        ),
        "a UUID version 4 like 651b3b4d-5bf3-446d-9fd0-bacdc7bfbfff",
    ),
    IdentityType.MAC_COLON: (
        re.compile(rf"[{_HEX}]{{2}}(:[{_HEX}]{{2}}){{5}}"),
        "a MAC address like 00:14:22:01:23:45",
    ),
    IdentityType.MAC_HYPHEN: (
        re.compile(rf"[{_HEX}]{{2}}(-[{_HEX}]{{2}}){{5}}"),
        "a MAC address like 00-14-22-01-23-45",
    ),
    IdentityType.MAC_NONE: (re.compile(rf"[{_HEX}]{{12}}"), "a MAC address like 001422012345"),
}


@dataclass(frozen=True)
class IdentityFormat:
    prefix: str = ""
    type: str = IdentityType.OPAQUE
    length: int | None = None  # characters after the prefix; None = unlimited
    casing: str = Casing.MIXED

    def describe(self) -> str:
        parts = [IdentityType(self.type).label]
        if self.length:
            parts.append(f"{self.length} characters")
        if self.type in HEX_TYPES and self.casing != Casing.MIXED:
            parts.append(Casing(self.casing).label.lower())
        if self.prefix:
            parts.append(f"after the prefix “{self.prefix}”")
        return ", ".join(parts)


# Printable ASCII except space and "/": the common case, checked without a per-character loop.
_SAFE_ASCII = re.compile(r"[!-.0-~]*")


def unsafe_character(text: str) -> str | None:
    """Describe the first character that may not appear in an identity or prefix, if any.

    Whitespace and control/format characters would be invisible in the UI and logs and break
    the wire forms; "/" would break the identity's URL path.
    """
    if _SAFE_ASCII.fullmatch(text):
        return None
    for position, char in enumerate(text, start=1):
        category = unicodedata.category(char)
        if char.isspace() or category.startswith("C") or category in ("Zl", "Zp"):
            return f"contains a space or control character at position {position}"
        if char == "/":
            return f"contains “/” at position {position}"
    return None


def identity_error(identity: object, fmt: IdentityFormat) -> str | None:
    """Return None if `identity` is valid for `fmt`, else the reason it is not."""
    if not isinstance(identity, str):
        return "the identity must be text"
    if identity == "":
        return "the identity is empty"
    if len(identity) > MAX_IDENTITY_LENGTH:
        return f"the identity is longer than {MAX_IDENTITY_LENGTH} characters"
    if reason := unsafe_character(identity):
        return f"the identity {reason}"
    if fmt.prefix:
        if not identity.startswith(fmt.prefix):
            return f"the identity must start with the prefix “{fmt.prefix}”"
        body = identity[len(fmt.prefix) :]
        if not body:
            return "the identity has nothing after the prefix"
    else:
        body = identity
    if fmt.length and len(body) != fmt.length:
        where = " after the prefix" if fmt.prefix else ""
        return f"the identity must have exactly {fmt.length} characters{where}, not {len(body)}"
    if fmt.type != IdentityType.OPAQUE:
        pattern, wanted = _PATTERNS[IdentityType(fmt.type)]
        if not pattern.fullmatch(body):
            return f"the identity must be {wanted}"
    if fmt.type in HEX_TYPES:
        if fmt.casing == Casing.LOWER and body != body.lower():
            return "the identity must use lower-case hexadecimal letters"
        if fmt.casing == Casing.UPPER and body != body.upper():
            return "the identity must use upper-case hexadecimal letters"
    return None


def format_error(fmt: IdentityFormat) -> dict[str, str]:
    """Check a format definition itself; returns {field: message} (empty when valid)."""
    errors: dict[str, str] = {}
    if len(fmt.prefix) > MAX_PREFIX_LENGTH:
        errors["prefix"] = f"The prefix may have at most {MAX_PREFIX_LENGTH} characters."
    elif reason := unsafe_character(fmt.prefix):
        errors["prefix"] = f"The prefix {reason}."
    if fmt.type not in IdentityType.values:
        errors["type"] = f"Unknown identity type “{fmt.type}”."
    elif fmt.length is not None:
        fixed = FIXED_LENGTHS.get(IdentityType(fmt.type))
        if fmt.length < 0:
            errors["length"] = "The length cannot be negative."
        elif fixed and fmt.length not in (0, fixed):
            errors["length"] = (
                f"{IdentityType(fmt.type).label} identities are always {fixed} characters; "
                "leave the length blank."
            )
        elif fmt.length + len(fmt.prefix) > MAX_IDENTITY_LENGTH:
            errors["length"] = (
                f"Prefix and length together may not exceed {MAX_IDENTITY_LENGTH} characters."
            )
    if fmt.casing not in Casing.values:
        errors["casing"] = f"Unknown casing “{fmt.casing}”."
    return errors
