"""Keyed hashes for machine secrets and symmetric encryption for secrets used later in clear.

Tokens are high-entropy random strings, so a fast keyed hash (HMAC-SHA256 with a pepper kept
outside the database) is as strong as a slow hash for them and costs microseconds per request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

TOKEN_ALPHABET = string.ascii_letters + string.digits


# The largest multiple of the alphabet's size that fits in a byte: bytes at or above it are
# dropped, so that every character is equally likely (no modulo bias).
_UNBIASED_BELOW = 256 - 256 % len(TOKEN_ALPHABET)


def new_token(length: int = 40) -> str:
    """A CSPRNG token of [A-Za-z0-9]; 40 characters carry 238 bits.

    Rejection sampling on one `token_bytes` call: `secrets.choice` per character costs 40
    calls into the OS random source, a visible share of an activation's CPU.
    """
    chars: list[str] = []
    while len(chars) < length:
        chars += [
            TOKEN_ALPHABET[b % len(TOKEN_ALPHABET)]
            for b in secrets.token_bytes(length + 8)
            if b < _UNBIASED_BELOW
        ]
    return "".join(chars[:length])


def keyed_hash(secret: str, key_id: str | None = None) -> str:
    """'<key id>$<hex HMAC-SHA256>' of the secret with the current (or given) pepper."""
    kid = key_id or settings.TOKEN_PEPPER_CURRENT
    digest = hmac.new(settings.TOKEN_PEPPERS[kid], secret.encode(), hashlib.sha256).hexdigest()
    return f"{kid}${digest}"


def candidate_hashes(secret: str) -> list[str]:
    """The secret's hash under every configured pepper, for lookups during a rotation."""
    return [keyed_hash(secret, kid) for kid in settings.TOKEN_PEPPERS]


def hashes_match(stored: str, secret: str) -> bool:
    kid = stored.partition("$")[0]
    if kid not in settings.TOKEN_PEPPERS:
        return False
    return hmac.compare_digest(stored, keyed_hash(secret, kid))


def _fernet() -> Fernet:
    return Fernet(settings.ENCRYPTION_KEY.encode())


def encrypt(text: str) -> str:
    return _fernet().encrypt(text.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:  # wrong ENCRYPTION_KEY: say so instead of failing obscurely
        raise RuntimeError("Stored secret cannot be decrypted: is ENCRYPTION_KEY right?") from exc
