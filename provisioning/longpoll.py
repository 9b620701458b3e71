"""Long polls (SPEC.md section 3): `GET /onep:v1/stack/alias?<alias>` with `Request-Timeout`.

The Django view authenticates the poll and reads the alias once. When the value is not newer
than `If-Modified-Since`, the view hands a `PollWait` to the ASGI front (`iotconnector.front`)
and returns; the front parks the poll in its event loop (no thread, no database connection)
until the alias changes or the time runs out.

Wake-ups are hints: a woken poll re-reads the value before it answers, and a poll registers
its waiter before that re-read, so a change between the read and the wait is never lost.
They reach every process. On SQLite: in-process after the commit, and to the other server
processes over datagram sockets (`provisioning.wakebus`). On PostgreSQL: `pg_notify` sent by
the writing statement itself and one `LISTEN` connection per server process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from functools import lru_cache

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils.http import http_date, parse_http_date_safe

from provisioning.values import current_value_at
from provisioning.wakebus import WakeBus
from provisioning.wire import WireError, encode_pairs

log = logging.getLogger(__name__)

CHANNEL = "iot_alias"
MAX_TIMEOUT_MS = 300_000
# Without a front to park it (plain WSGI, e.g. `runserver`), a poll holds its thread and
# re-reads at this interval.
WSGI_RECHECK_S = 0.25

Key = tuple[int, str]

# A CTE body that notifies every (device_id, alias) row of a CTE named `stored`. A statement
# that stores values includes it (and refers to it, or PostgreSQL skips it): the notification
# is then part of the write's own transaction, and costs no extra round trip. Keys go
# NOTIFY_KEYS to a notification, one per line (a batch of 256 writes: 11 notifications, not
# 256; each notification costs the transaction a queue entry and a duplicate check). At most
# 24 keys of ≤ 19 digits and ≤ 64 characters of ≤ 4 bytes fit PostgreSQL's 8,000 bytes.
NOTIFY_KEYS = 24
NOTIFY_STORED = (
    "SELECT pg_notify('iot_alias', string_agg(device_id || ':' || alias, E'\\n'))"  # noqa: S608 (constants; CHANNEL)
    f" FROM (SELECT device_id, alias, (row_number() OVER ()) / {NOTIFY_KEYS} AS chunk"
    " FROM stored) AS keys GROUP BY chunk"
)


# --- The wire: pure functions ---------------------------------------------------------------


def parse_timeout(value: str) -> int:
    """`Request-Timeout` in ms: a whole number ≥ 0, clamped to 300000."""
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        raise WireError(400, "Request-Timeout must be a whole number of milliseconds (0-300000)")
    digits = value.lstrip("0") or "0"
    # Clamped without int() of thousands of digits (Python refuses more than 4,300).
    return MAX_TIMEOUT_MS if len(digits) > 6 else min(int(digits), MAX_TIMEOUT_MS)


def parse_since(value: str | None) -> int | None:
    """`If-Modified-Since` (unix seconds or an HTTP-date) as unix seconds; None when absent."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isascii() and value.isdigit() and len(value) <= 12:
        return int(value)
    if (parsed := parse_http_date_safe(value)) is not None:
        return parsed
    raise WireError(400, "If-Modified-Since must be unix seconds or an HTTP-date")


def is_newer(timestamp_us: int, since_s: int | None, started_us: int) -> bool:
    """Whether a value stored at `timestamp_us` answers the poll.

    With `If-Modified-Since` the comparison is HTTP's, to the second: `Last-Modified` is a
    whole second, so polling again with it does not return the same value again. Without it,
    any value stored after the poll arrived answers it.
    """
    if since_s is None:
        return timestamp_us > started_us
    return timestamp_us // 1_000_000 > since_s


def answer(alias: str, value: str, timestamp_us: int) -> tuple[bytes, list[tuple[str, str]]]:
    """Body and headers of a poll's `200`."""
    body = encode_pairs([(alias, value)]).encode()
    return body, [
        ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Last-Modified", http_date(timestamp_us // 1_000_000)),
    ]


@dataclass
class PollWait:
    """A poll handed from the Django view to the front: what to wait for, and until when."""

    device_pk: int
    alias: str
    definition: dict
    since_s: int | None
    started_us: int
    deadline: float  # time.monotonic()

    @property
    def key(self) -> Key:
        return (self.device_pk, self.alias)


def read_current(wait: PollWait) -> tuple[str, int] | None:
    """The alias's value and timestamp if newer than the poll's point, else None (sync)."""
    found = current_value_at(wait.device_pk, wait.alias, wait.definition)
    if found is not None and is_newer(found[1], wait.since_s, wait.started_us):
        return found
    return None


def reread(wait: PollWait) -> tuple[str, int] | None:
    """`read_current` from the front's thread pool, outside any request: the connection is
    looked after as a request would (reused within CONN_MAX_AGE, else closed)."""
    close_old_connections()
    try:
        return read_current(wait)
    finally:
        close_old_connections()


def wait_in_thread(wait: PollWait) -> tuple[str, int] | None:
    """Plain WSGI only: hold the thread, re-reading, until a newer value or the deadline."""
    while (remaining := wait.deadline - time.monotonic()) > 0:
        time.sleep(min(WSGI_RECHECK_S, remaining))
        if (found := read_current(wait)) is not None:
            return found
    return None


# --- Wake-ups -------------------------------------------------------------------------------


@dataclass
class Hub:
    """The polls waiting in this process's event loop, by (device, alias)."""

    waiters: dict[Key, set[asyncio.Future]] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop | None = None
    ready: asyncio.Event | None = None  # set once wake-ups from other processes arrive
    listener: asyncio.Task | None = None
    count: int = 0  # waiting polls (read by /healthz from another thread)
    closing: bool = False  # the server is stopping: polls answer 304 now
    parked: dict[int, int] = field(default_factory=dict)  # polls per device, while parked
    parked_total: int = 0
    # Called with every key woken (the MQTT gateway's sessions: `provisioning.mqtt.gateway`).
    observers: list = field(default_factory=list)

    def __len__(self) -> int:
        return self.count

    def register(self, key: Key) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(key, set()).add(future)
        self.count += 1
        return future

    def discard(self, key: Key, future: asyncio.Future) -> None:
        futures = self.waiters.get(key)
        if futures is not None and future in futures:
            futures.discard(future)
            self.count -= 1
            if not futures:
                del self.waiters[key]

    def wake(self, key: Key) -> None:
        for observer in self.observers:
            observer(key)
        futures = self.waiters.pop(key, ())
        self.count -= len(futures)
        for future in futures:
            if not future.done():
                future.set_result(None)

    def wake_all(self) -> None:
        for key in list(self.waiters):
            self.wake(key)

    def close(self) -> None:
        self.closing = True
        self.wake_all()

    def wake_from_thread(self, keys: list[Key]) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: [self.wake(key) for key in keys])


hub = Hub()


def uses_notify() -> bool:
    return settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


def announce(device_pk: int, aliases: list[str]) -> None:
    """Wake the polls on these aliases once the current transaction commits.

    On PostgreSQL the notification joins the transaction (delivered on commit, to every
    process); statements that can carry it themselves (the device write) do so instead.
    """
    announce_keys([(device_pk, alias) for alias in aliases])


def announce_keys(keys: list[Key]) -> None:
    """`announce` of many devices' aliases: one statement (PostgreSQL) or one hand-over."""
    if not keys:
        return
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_notify(%s, x) FROM unnest(%s::text[]) AS x",
                [CHANNEL, [f"{device_pk}:{alias}" for device_pk, alias in keys]],
            )
    else:
        announce_keys_local(keys)


# A wake-up of no device (device 0): the sessions of this connector are to be checked again
# (its settings changed, or some of its devices were locked, deleted or revoked).
CONNECTOR_KEY = "$connector:"


def announce_connector(connector_id: str) -> None:
    """Once the current transaction commits, every server process looks again at the MQTT
    sessions it holds for this connector (`provisioning.mqtt.gateway`)."""
    announce(0, [CONNECTOR_KEY + connector_id])


def announce_keys_local(keys: list[Key]) -> None:
    """`announce_local` of many devices' aliases at once (a batch of writes: one hand-over
    to the loop and one datagram per process, not one per write)."""
    if keys and connection.vendor != "postgresql":
        transaction.on_commit(lambda: _wake_everywhere(keys))


def _wake_everywhere(keys: list[Key]) -> None:
    hub.wake_from_thread(keys)
    bus().send(keys)


@lru_cache(maxsize=1)
def bus() -> WakeBus:
    return WakeBus(settings.DATA_DIR)


def stop() -> None:
    """Server shutdown (in the loop): stop listening for wake-ups from other processes."""
    if hub.listener is not None:
        hub.listener.cancel()
    if bus.cache_info().currsize:
        bus().close()


async def start() -> None:
    """Bind the hub to the running loop; on PostgreSQL start listening (once per process)."""
    if hub.loop is None:
        hub.loop = asyncio.get_running_loop()
        hub.ready = asyncio.Event()
        if uses_notify():
            hub.listener = asyncio.create_task(_listen())
        else:
            bus().listen(hub.loop, lambda keys: [hub.wake(key) for key in keys])
            hub.ready.set()
    if not hub.ready.is_set():
        try:  # a poll registered before LISTEN could miss its notification
            await asyncio.wait_for(hub.ready.wait(), timeout=5)
        except TimeoutError:
            log.warning("long polls: not listening for notifications yet")


def _listen_params() -> dict:
    from django.db import connections

    params = connections["default"].get_connection_params()
    skip = {"prepare_threshold"}
    return {k: v for k, v in params.items() if isinstance(v, str | int) and k not in skip}


async def _listen() -> None:
    """One connection per process that LISTENs and wakes the polls named in notifications.

    After a (re)connect every waiting poll is woken to re-read: notifications sent while
    the connection was down are lost.
    """
    import psycopg

    params = _listen_params()
    delay = 0.5
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
            async with conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                hub.ready.set()
                hub.wake_all()
                delay = 0.5
                async for note in conn.notifies():
                    for key in note.payload.split("\n"):  # one or more keys, a line each
                        device, _, alias = key.partition(":")
                        if device.isdigit():
                            hub.wake((int(device), alias))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("long polls: the notification connection failed; reconnecting")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10)


RETRY_AFTER_S = 5


def refusal(wait: PollWait) -> tuple[int, str] | None:
    """(status, reason) when this poll may not wait now: too many in the process or for the
    device. Checked in the event loop right before the poll is parked."""
    if hub.parked_total >= settings.LONG_POLL_MAX_WAITING:
        return 503, "too many long polls waiting on this server: retry later"
    if hub.parked.get(wait.device_pk, 0) >= settings.LONG_POLL_MAX_PER_DEVICE:
        return 429, "too many long polls waiting for this device"
    return None


async def park(wait: PollWait, receive, run_sync) -> tuple[str, int] | None | bool:
    """Wait in the event loop for a newer value of the polled alias.

    Returns (value, timestamp) to answer with, None when the time ran out, False when the
    client went away. `run_sync` runs a function in a thread of the server's pool.
    """
    hub.parked[wait.device_pk] = hub.parked.get(wait.device_pk, 0) + 1
    hub.parked_total += 1
    disconnected = asyncio.ensure_future(_disconnect(receive))
    future = None
    try:
        await start()
        while True:
            future = hub.register(wait.key)
            if (found := await run_sync(reread, wait)) is not None:
                return found
            remaining = wait.deadline - time.monotonic()
            if remaining <= 0 or hub.closing:
                return None
            done, _ = await asyncio.wait(
                {future, disconnected}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if disconnected in done:
                return False
            if not done or hub.closing:
                return None
            # Woken: register again, re-read, and answer or go on waiting.
    finally:
        if future is not None:
            hub.discard(wait.key, future)
        disconnected.cancel()
        hub.parked_total -= 1
        if (left := hub.parked[wait.device_pk] - 1) > 0:
            hub.parked[wait.device_pk] = left
        else:
            del hub.parked[wait.device_pk]


async def _disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
