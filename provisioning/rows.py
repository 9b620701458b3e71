"""Rows every store backend writes the same way, and the lock SQLite's batches take turns on."""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator

from django.db import connection

from connector.sql import insert_rows
from devices.models import DeviceActivity
from provisioning import rules

ACTIVITY_COLUMNS = ["device_id", "last_ip", "last_seen"]
ACTIVITY_UPSERT = {"conflict": ["device_id"], "update": ["last_ip", "last_seen"]}


class WriterLock:
    """SQLite: one batch at a time, across the threads of every server process, by a
    blocking `flock` on a file beside the database (an open file per thread, so threads of
    one process exclude each other too). Without it a second process's batch waits for
    SQLite's own lock in the busy handler, which polls with sleeps of up to 100 ms: with two
    workers the writes' p99 was 47 ms and the activations' 101 ms; with it, 12 and 14 ms
    (scripts/bench_device_api.py, WEB_CONCURRENCY=2). PostgreSQL: nothing to do."""

    def __init__(self) -> None:
        self.local = threading.local()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if connection.vendor != "sqlite" or connection.is_in_memory_db():
            yield  # PostgreSQL has row locks; an in-memory SQLite is one process
            return
        if (file := getattr(self.local, "file", None)) is None:
            path = f"{connection.settings_dict['NAME']}.batch-lock"
            file = self.local.file = open(path, "a")  # noqa: SIM115 (kept open: per thread)
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


WRITER_LOCK = WriterLock()


def touch(device_id: int, last_ip: str | None, last_seen: int | None, ip: str, now: int) -> None:
    """Last IP / last seen, when `rules.activity_due`: a narrow row of its own."""
    if rules.activity_due(last_ip, last_seen, ip, now):
        insert_rows(DeviceActivity, ACTIVITY_COLUMNS, [(device_id, ip, now)], **ACTIVITY_UPSERT)
