"""The transactional outbox of device events (SPEC.md section 10).

Every state change that applications hear of (a write, a record, an activation, a cloud set,
a deletion) adds its outbox rows with the same `insert_rows` call, in the same transaction,
as its log event: the store's batches (`provisioning.store_*`), the device services. A
change that rolls back leaves no row; a 204 means the row is committed and the relay
(`connector.relay`) will deliver it. Rows are added only for connectors with an enabled
subscription (`Connector.events_enabled`), read in the transaction that writes.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from pathlib import Path
from typing import Any, NamedTuple

from django.conf import settings

from connector.models import Connector, OutboxEvent
from connector.sql import insert_rows, tables
from connector.sql import run as sql_run

# Murano's device2 event types this connector produces (SPEC.md section 10).
TYPES = (
    "provisioned",
    "connect",
    "disconnect",
    "data_in",
    "data_out",
    "content_in",
    "deleted",
    "expired",
)


class OutboxRow(NamedTuple):
    """One outbox row as inserted: the fields are the table's columns, in `COLUMNS` order."""

    connector_id: str
    partition: int
    type: str
    identity: str
    ip: str
    protocol: str
    time: int  # µs
    payload: str  # JSON: [{"timestamp": µs, "values": {alias: value}}]
    connection_id: str = ""  # the MQTT session's (connect, disconnect)


COLUMNS = list(OutboxRow._fields)
# What the store's claim statement inserts: its rows leave `connection_id` to its default.
BATCH_COLUMNS = COLUMNS[:-1]


def partition_of(device_id: int) -> int:
    """The partition of one device: its events are delivered in order within it. From its
    row id, which every statement that writes an event knows (PostgreSQL's batch writes
    compute the same, `device_id % EVENTS_PARTITIONS`). Change EVENTS_PARTITIONS only with
    the outbox drained."""
    return device_id % settings.EVENTS_PARTITIONS


def payload_json(entries: list[tuple[int, dict[str, Any]]]) -> str:
    return json.dumps([{"timestamp": ts, "values": values} for ts, values in entries])


def row(
    connector_id: str,
    type: str,
    device_id: int,
    identity: str,
    ip: str | None,
    time: int,
    payload: str = "[]",
    protocol: str = "http",
    connection_id: str = "",
) -> OutboxRow:
    return OutboxRow(
        connector_id,
        partition_of(device_id),
        type,
        identity,
        ip or "",
        protocol,
        time,
        payload,
        connection_id,
    )


def values_payload(time: int, pairs) -> str:
    """A write's payload: every alias as sent, defined or not (Murano's scripts see all)."""
    return payload_json([(time, dict(pairs))])


def enabled(connector_ids) -> set[str]:
    """Of these connectors, those whose events are delivered; read inside the transaction
    that adds the rows, so a subscription created before it commits is seen."""
    ids = list(set(connector_ids))
    if not ids:
        return set()
    (table,) = tables(Connector)
    marks = ", ".join(["%s"] * len(ids))
    sql = f"SELECT id FROM {table} WHERE events_enabled AND id IN ({marks})"  # noqa: S608
    return {found for (found,) in sql_run(sql, ids)}


def add(rows: list[OutboxRow], *, checked: bool = False) -> None:
    """Insert the rows of connectors whose events are delivered (all of them if `checked`:
    the caller read `enabled` in this transaction), then wake this process's relay."""
    if not rows:
        return
    if not checked:
        on = enabled(r.connector_id for r in rows)
        rows = [r for r in rows if r.connector_id in on]
    if rows:
        insert_rows(OutboxEvent, COLUMNS, rows)
        wake_after_commit()


# --- Waking the relay -------------------------------------------------------------------------

# Set when this process committed outbox rows: its relay (EVENTS_RELAY=worker) looks at once
# instead of at its next poll.
pending = threading.Event()


def wake_after_commit() -> None:
    from django.db import transaction

    transaction.on_commit(wake)


def wake() -> None:
    """Outbox rows were committed: this process's relay and the relay process of this server
    (a datagram to its socket) look now rather than at their next poll. A hint only: a lost
    one costs at most EVENTS_POLL_INTERVAL, never an event."""
    pending.set()
    address = relay_address()
    try:
        if (sock := _sockets.get(address)) is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            _sockets[address] = sock
            sock.connect(address)
        sock.send(b"!", socket.MSG_DONTWAIT)
    except BlockingIOError:
        pass  # its queue is full: it is awake anyway
    except OSError:  # no relay process listens here (or it restarted): connect next time
        _sockets.pop(address).close()


def relay_address() -> bytes:
    """The abstract Unix socket of the relay process of the server on this DATA_DIR."""
    tag = hashlib.sha256(str(Path(settings.DATA_DIR).resolve()).encode()).hexdigest()[:16]
    return f"\0iot-relay-{tag}".encode()


_sockets: dict[bytes, socket.socket] = {}


def listen_for_wakes() -> bool:
    """In the relay process: set `pending` whenever a worker committed outbox rows. False if
    another relay on this DATA_DIR already listens (this one then polls)."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        receiver.bind(relay_address())
    except OSError:
        receiver.close()
        return False

    def receive() -> None:
        while True:
            receiver.recv(64)
            pending.set()

    threading.Thread(target=receive, name="relay-wakes", daemon=True).start()
    return True


def event_json(event: OutboxEvent | Any) -> dict[str, Any]:
    """The event object as delivered (SPEC.md section 10); `id` is stable across retries."""
    return {
        "id": f"evt_{event.id}",
        "type": event.type,
        "connector": event.connector_id,
        "identity": event.identity,
        "ip": event.ip or None,
        "protocol": event.protocol,
        "timestamp": event.time,
        "connection_id": event.connection_id or None,
        "payload": json.loads(event.payload),
    }


def prune(days: int | None = None) -> int:
    """Delete outbox rows older than EVENTS_OUTBOX_RETENTION_DAYS that every enabled
    subscription of their connector has passed, partition by partition (an undelivered row
    is kept however old: it is still owed; a disabled subscription holds nothing back)."""
    from django.db.models import Min

    from connector.models import DeliveryCursor, now_us

    days = settings.EVENTS_OUTBOX_RETENTION_DAYS if days is None else days
    cutoff = now_us() - days * 86_400_000_000
    old = OutboxEvent.objects.filter(time__lt=cutoff)
    floors = {
        (row["subscription__connector_id"], row["partition"]): row["floor"]
        for row in DeliveryCursor.objects.filter(subscription__enabled=True)
        .values("subscription__connector_id", "partition")
        .annotate(floor=Min("last_id"))
    }
    deleted = 0
    for connector_id, partition in old.values_list("connector_id", "partition").distinct():
        rows = old.filter(connector_id=connector_id, partition=partition)
        if (floor := floors.get((connector_id, partition))) is not None:
            rows = rows.filter(id__lte=floor)
        deleted += rows.delete()[0]
    return deleted
