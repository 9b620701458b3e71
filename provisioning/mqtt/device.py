"""The MQTT gateway's calls that need the database, run on a thread of the server's pool.

Each is a thin translation: an MQTT CONNECT or PUBLISH into the same calls the HTTP Device
API makes (`provisioning.auth`, `provisioning.certauth`, `provisioning.services`), and their
answers into MQTT's (CONNACK codes; close). No rule lives here.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections

from connector import events
from connector.models import MQTT_PROTOCOL, EventType, now_us
from connector.sql import insert_rows
from devices.models import AliasValue, DeviceSession
from provisioning import auth, connectors, rules, services, store
from provisioning.answers import Answer, Pending, refused
from provisioning.auth import Credentials, DeviceRow, authenticate_credentials
from provisioning.certauth import authenticate_chain
from provisioning.jobs import SessionJob
from provisioning.models import GatewayNode
from provisioning.mqtt import codec
from provisioning.refusals import activation_refused, write_refused

PROTOCOL = "mqtt"
SESSION_KEY = store.SESSION_KEY
NODE_SEEN_EVERY_S = 15
NODE_ALIVE_US = 3 * NODE_SEEN_EVERY_S * 1_000_000


def node_name() -> str:
    """This server process, as its sessions' rows name it."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


def connack_code(answer: Answer) -> int:
    """The CONNACK refusing a connection the HTTP API would have answered so."""
    if answer.status == 401:
        return codec.REFUSED_BAD_CREDENTIALS
    if answer.status in (429, 503):
        return codec.REFUSED_UNAVAILABLE
    return codec.REFUSED_NOT_AUTHORIZED  # 403 (locked, disabled, address), 404, 415


@dataclass
class Authorized:
    """What a CONNECT earned: a CONNACK code and, when accepted, the device (None for an
    anonymous connection, which may only provision) and the job opening its session."""

    code: int
    device: DeviceRow | None = None
    job: SessionJob | None = None


def _fresh(function):
    """Outside any request: the connection looked after as a request would."""

    def run(*args, **kwargs):
        close_old_connections()
        try:
            return function(*args, **kwargs)
        finally:
            close_old_connections()

    return run


@_fresh
def authorize(
    connector_id: str, ip: str, connect: codec.Connect, chain_pem: str, connection: str, node: str
) -> Authorized:
    """Authenticate a CONNECT (SPEC.md section 8); when accepted, the job opening its session
    (the gateway hands it to the store, whose group commit opens many at once)."""
    entry, failures = connectors.load(connector_id, ip)
    if entry is None or entry.connector.protocol_name != MQTT_PROTOCOL:
        return Authorized(codec.REFUSED_NOT_AUTHORIZED)
    username = connect.username or ""
    if connect.password is None:
        if username:
            return Authorized(codec.REFUSED_BAD_CREDENTIALS)  # an identity and no password
        if not chain_pem:  # anonymous: may provision only
            if rules.over_failure_limit(failures):
                return Authorized(codec.REFUSED_UNAVAILABLE)
            return Authorized(codec.ACCEPTED)
        found = authenticate_chain(connector_id, ip, chain_pem, PROTOCOL)
    else:
        try:
            password = connect.password.decode("utf-8")
        except UnicodeDecodeError:
            password = None
        if password is None or "\x00" in password:
            creds = Credentials(malformed=True)
        elif username:
            creds = Credentials(basic=f"{username}:{password}")
        else:
            creds = Credentials(token=password)
        found = authenticate_credentials(connector_id, ip, creds, secure=True)
    if isinstance(found, Answer):
        return Authorized(connack_code(found))
    if connect.client_id not in ("", found.identity):
        return Authorized(codec.REFUSED_IDENTIFIER)
    settable = tuple(
        alias
        for alias, definition in services.definitions(found, ip).resources.items()
        if definition.get("settable")
    )
    job = session_job(found, ip, connection, node, opening=True, settable=settable)
    return Authorized(codec.ACCEPTED, found, job)


def session_job(
    device: DeviceRow,
    ip: str,
    connection: str,
    node: str,
    *,
    opening: bool,
    reason: str = "",
    settable: tuple[str, ...] = (),
) -> SessionJob:
    """The store's job opening the device's session (its `connect` event) or ending it (its
    `disconnect`, with the reason)."""
    now = now_us()
    if opening:
        kind, summary, payload = EventType.CONNECT, f"Connected over MQTT ({connection})", {}
    else:
        kind, summary = EventType.DISCONNECT, f"Disconnected ({reason})"
        payload = {"reason": reason}
    event = events.row(
        device.connector_id,
        kind,
        summary[:250],
        identity=device.identity,
        source_ip=ip,
        payload={"connection_id": connection, **payload},
    )
    return SessionJob(
        device.connector_id,
        device.id,
        connection,
        node,
        ip,
        now,
        opening,
        event._replace(time=now),
        settable,
    )


def set_values(device: DeviceRow, since: int, aliases=None) -> list[tuple[str, str, int]]:
    """The device's settable aliases whose `set` value was stored after `since` (µs)."""
    entry = services.definitions(device, device.last_ip or "")
    settable = [a for a, d in entry.resources.items() if d.get("settable")]
    if aliases is not None:
        settable = [a for a in settable if a in aliases]
    if not settable:
        return []
    rows = AliasValue.objects.filter(
        device_id=device.id, alias__in=settable, timestamp__gt=since, set__isnull=False
    ).values_list("alias", "set", "timestamp")
    return sorted(rows, key=lambda row: row[2])


read_set_values = _fresh(set_values)


@_fresh
def still_allowed(connector_id: str, devices: list[DeviceRow]) -> set[int]:
    """Of these sessions' devices, those that may still be connected: the connector still
    takes MQTT, and each device is there, unchanged in state and credential, and allowed
    (`auth.refusal_for`, as its writes are)."""
    entry, _failures = connectors.load(connector_id, "0.0.0.0")  # noqa: S104 (no address)
    if entry is None or entry.connector.protocol_name != MQTT_PROTOCOL or not devices:
        return set()
    fresh = auth.writers([_ById(connector_id, d.id) for d in devices])
    allowed = set()
    for known in devices:
        row = fresh.get((connector_id, "id", known.id))
        if (
            row is not None
            and (row.state, row.secret_hash) == (known.state, known.secret_hash)
            and auth.refusal_for(row, secure=True) is None
        ):
            allowed.add(known.id)
    return allowed


@dataclass(frozen=True)
class _ById:
    """What `auth.writers` needs of a lookup by device id."""

    connector_id: str
    device_id: int
    hashes: tuple = ()


@_fresh
def provision(connector_id: str, identity: str, payload: bytes, ip: str) -> Pending | Answer:
    """`$provision/<identity>`: an empty payload asks for a token, else it is the password.
    The HTTP activation's checks, in its order."""
    entry, failures = connectors.load(connector_id, ip)
    if entry is None:
        return refused(rules.Refusal(404, "no such connector"))
    if rules.over_failure_limit(failures):
        return refused(rules.Refusal(429, rules.TOO_MANY))
    try:
        password = payload.decode("utf-8") if payload else None
    except UnicodeDecodeError:
        why = rules.Refusal(400, "the password is not UTF-8 text")
        return activation_refused(connector_id, identity, ip, why)
    return services.activation(entry, identity, password, ip, secure=True, protocol=PROTOCOL)


@_fresh
def record(device: DeviceRow, points: dict, ip: str, connection: str) -> Pending | Answer:
    return services.record(device, points, ip, PROTOCOL, connection)


@_fresh
def write(
    device: DeviceRow, pairs: list[tuple[str, str]], ip: str, connection: str
) -> Pending | Answer:
    return services.device_write(
        device, pairs, ip, secure=True, protocol=PROTOCOL, connection_id=connection
    )


@_fresh
def refuse(device: DeviceRow, alias: str, payload: bytes, ip: str, reason: str) -> None:
    """A PUBLISH the wire format refuses: logged as the HTTP API logs a refused write."""
    shown = payload[:200].decode("utf-8", "replace")
    write_refused(device.connector_id, device.identity, [(alias, shown)], ip, reason)


@_fresh
def log_refused_packet(connector_id: str, identity: str, ip: str, reason: str) -> None:
    """A connection closed for a packet the gateway does not take."""
    if connector_id:
        events.record(
            connector_id,
            EventType.AUTH_FAILED if not identity else EventType.DATA_REFUSED,
            f"MQTT connection closed: {reason}"[:300],
            identity=identity[:128],
            source_ip=ip,
            payload={"reason": reason, "protocol": PROTOCOL},
        )


@_fresh
def beat(node: str) -> None:
    """This process is alive (its sessions are connected)."""
    row = (node, now_us())
    insert_rows(GatewayNode, ["name", "seen"], [row], conflict=["name"], update=["seen"])


@_fresh
def end_node(node: str) -> None:
    """A graceful stop: every session of this process is disconnected."""
    now = now_us()
    DeviceSession.objects.filter(node=node, connected_at__isnull=False).update(
        connected_at=None, disconnected_at=now
    )
    GatewayNode.objects.filter(name=node).delete()


def connected_sessions(device_ids) -> dict[int, int]:
    """Of these devices, those connected now over MQTT: device id -> connected since (µs)."""
    alive = now_us() - NODE_ALIVE_US
    nodes = set(GatewayNode.objects.filter(seen__gte=alive).values_list("name", flat=True))
    return {
        device_id: since
        for device_id, since, node in DeviceSession.objects.filter(
            device_id__in=list(device_ids), connected_at__isnull=False
        ).values_list("device_id", "connected_at", "node")
        if node in nodes
    }


def enabled() -> bool:
    return bool(settings.MQTT_PORT)
