"""Slow down guessing, counted in the database so every process and server sees the same numbers.

Two kinds of counter, both per fixed window:

- per (key, address): `AuthFailure`. The key is a connector id for devices, or a scope such as
  `@accounts` for sign-ins. It bounds what one address may try across everything: unknown
  tokens, enumerated identities, refused certificates.
- per (key, subject, address): `GuessFailure`. The subject is what a guess is aimed at: a
  device identity, or an account. Its rows for one subject, summed over addresses, are that
  subject's failures from everywhere.

`guess_refused` is the one rule that judges a guessable secret (a device password, an account
password) from these counts. It lets an honest client in whatever its neighbours do: the
counts that refuse it are those of its own subject.
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import NamedTuple

from django.conf import settings
from django.db import connection

from provisioning.models import AuthFailure, GuessFailure


def window_start(now: float, size: int) -> int:
    return int(now) // size * size


def retry_after(size: int | None = None, now: float | None = None) -> int:
    """Seconds until the current window of this size ends (the device window by default)."""
    size = size or settings.DEVICE_AUTH_FAILURE_WINDOW
    now = time.time() if now is None else now
    return window_start(now, size) + size - int(now)


def current_window(size: int | None = None) -> int:
    """Start of the current window: the device lookup reads this window's failure count."""
    return window_start(time.time(), size or settings.DEVICE_AUTH_FAILURE_WINDOW)


def failures(key: str, ip: str, size: int | None = None) -> int:
    """Failures counted for this key and address in the current window."""
    return (
        AuthFailure.objects.filter(connector_id=key, ip=ip, window_start=current_window(size))
        .values_list("count", flat=True)
        .first()
        or 0
    )


def is_limited(count: int | None) -> bool:
    return (count or 0) >= settings.DEVICE_AUTH_FAILURE_LIMIT


def _upsert(sql_table: str, columns: list[str], values: list) -> int:
    marks = ", ".join(["%s"] * (len(values) + 1))
    conflict = ", ".join(columns)
    with connection.cursor() as cursor:
        # One statement on both backends; the unique constraint makes it race-free.
        cursor.execute(
            f"INSERT INTO {sql_table} ({conflict}, count) VALUES ({marks}) "  # noqa: S608
            f"ON CONFLICT ({conflict}) DO UPDATE SET count = {sql_table}.count + 1 "
            "RETURNING count",
            [*values, 1],
        )
        return cursor.fetchone()[0]


def _housekeeping(window: int) -> None:
    if random.random() < 0.01:  # noqa: S311 (housekeeping, not security)
        AuthFailure.objects.filter(window_start__lt=window - 3600).delete()
        GuessFailure.objects.filter(window_start__lt=window - 3600).delete()


def note_failure(key: str, ip: str, size: int | None = None) -> int:
    """Count one failure of this address; returns its count in the current window."""
    window = current_window(size)
    table = connection.ops.quote_name(AuthFailure._meta.db_table)
    count = _upsert(table, ["connector_id", "ip", "window_start"], [key, ip, window])
    _housekeeping(window)
    return count


# --- Guesses at one subject -------------------------------------------------------------------


class Guesses(NamedTuple):
    """A subject's failures in the current window: from this address, and from all."""

    here: int
    everywhere: int


def subject_of(text: str) -> str:
    """The stored form of a subject: short and fixed-length whatever was typed (an email,
    an identity), so no guess is kept in clear and no column can overflow."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def guesses(key: str, subject: str, ip: str, size: int) -> Guesses:
    window = current_window(size)
    rows = GuessFailure.objects.filter(
        connector_id=key, subject=subject_of(subject), window_start=window
    ).values_list("ip", "count")
    here = everywhere = 0
    for address, count in rows:
        everywhere += count
        if address == ip:
            here = count
    return Guesses(here, everywhere)


def note_guess(key: str, subject: str, ip: str, size: int) -> int:
    """Count one failed guess at `subject` from this address; returns the count from here."""
    window = current_window(size)
    table = connection.ops.quote_name(GuessFailure._meta.db_table)
    count = _upsert(
        table,
        ["connector_id", "subject", "ip", "window_start"],
        [key, subject_of(subject), ip, window],
    )
    _housekeeping(window)
    return count


def guess_refused(counts: Guesses, *, known: bool, here_limit: int, everywhere_limit: int) -> bool:
    """Whether a guessable secret is refused unchecked. From one address a subject gets
    `here_limit` failures per window. From everywhere together it gets `everywhere_limit`,
    after which only the address it is known at (where it last succeeded) may still try, so
    a guesser elsewhere cannot lock the honest owner out."""
    if counts.here >= here_limit:
        return True
    return counts.everywhere >= everywhere_limit and not known
