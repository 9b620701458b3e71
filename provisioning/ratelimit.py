"""Slow down guessing: failed device authentications per (connector, address) per window.

Counted in the database so every process and server sees the same numbers.
"""

from __future__ import annotations

import random
import time

from django.conf import settings
from django.db import connection

from provisioning.models import AuthFailure


def _window(now: float) -> int:
    size = settings.DEVICE_AUTH_FAILURE_WINDOW
    return int(now) // size * size


def retry_after(now: float | None = None) -> int:
    now = time.time() if now is None else now
    return _window(now) + settings.DEVICE_AUTH_FAILURE_WINDOW - int(now)


def current_window() -> int:
    """Start of the current window: the device lookup reads this window's failure count."""
    return _window(time.time())


def failures(connector_id: str, ip: str) -> int:
    """Failures counted for this key and address in the current window."""
    return (
        AuthFailure.objects.filter(connector_id=connector_id, ip=ip, window_start=current_window())
        .values_list("count", flat=True)
        .first()
        or 0
    )


def is_limited(count: int | None) -> bool:
    return (count or 0) >= settings.DEVICE_AUTH_FAILURE_LIMIT


def note_failure(connector_id: str, ip: str) -> int:
    """Count one failure; returns the count in the current window."""
    window = _window(time.time())
    table = connection.ops.quote_name(AuthFailure._meta.db_table)
    with connection.cursor() as cursor:
        # One statement on both backends; the unique constraint makes it race-free.
        cursor.execute(
            f"INSERT INTO {table} (connector_id, ip, window_start, count) VALUES (%s, %s, %s, 1) "  # noqa: S608
            "ON CONFLICT (connector_id, ip, window_start) DO UPDATE SET count = "
            f"{table}.count + 1 RETURNING count",
            [connector_id, ip, window],
        )
        count = cursor.fetchone()[0]
    if random.random() < 0.01:  # noqa: S311 (housekeeping, not security)
        AuthFailure.objects.filter(window_start__lt=window - 3600).delete()
    return count
