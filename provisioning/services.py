"""Device API state changes, one function each, shared by every entry (the HTTP handlers in
the event loop or a thread, the MQTT gateway, scripts): each checks what needs no database
and returns the job for the store with the answer that holds once it is stored (`Pending`),
or the answer refusing it.
"""

from __future__ import annotations

from django.utils import timezone

from connector import events, keys
from connector.models import Connector, EventType, now_us
from devices.models import DeviceAuthType, Status
from devices.resources import value_error
from provisioning import connectors, rows, rules
from provisioning.answers import EMPTY, NOT_FOUND, Answer, Pending, refused
from provisioning.auth import TOKEN_RE, DeviceRow
from provisioning.connectors import CachedConnector
from provisioning.explain import complete
from provisioning.jobs import ClaimJob, RecordJob, ValueRow, WriteJob
from provisioning.refusals import activation_refused, write_refused
from provisioning.values import current_values, short, split_write
from provisioning.wire import WireError

# --- Activation -------------------------------------------------------------------------------


def activation(
    entry: CachedConnector,
    identity: str,
    password: str | None,
    ip: str,
    *,
    secure: bool,
    protocol: str = "http",
) -> Pending | Answer:
    """`POST /provision/activate` (or MQTT `$provision/<identity>`) after the transport and
    failure-limit checks: the claim to store and the answer it earns, or the refusal of the
    connector's settings (logged)."""
    connector = entry.connector
    if refusal := rules.activation_refusal(connector, identity, password, ip):
        return activation_refused(connector.pk, identity, ip, refusal)
    if password is not None:
        credential, auth_type = password, DeviceAuthType.PASSWORD
    else:
        credential, auth_type = keys.new_token(40), DeviceAuthType.TOKEN
    now = now_us()
    event = events.row(
        connector.pk,
        EventType.PROVISIONED,
        f"Provisioned {identity} ({auth_type})",
        identity=identity,
        source_ip=ip,
        payload={"auth_type": auth_type, "secure": secure, "protocol": protocol},
    )
    job = ClaimJob(
        connector_id=connector.pk,
        identity=identity,
        # Provisioned over plain HTTP (developer mode) is shown as such.
        state=Status.PROVISIONED if secure else Status.DEVMODE,
        auth_type=auth_type,
        secret_hash=keys.keyed_hash(credential),
        provisioned_at=timezone.now(),
        now=now,
        ip=ip,
        secure=secure,
        event=event,
        fingerprint=entry.fingerprint,
        register=rules.may_register(connector),
        password=password,
        protocol=protocol,
    )
    # The password the device sent is its credential: nothing to answer but 204.
    answer = EMPTY if auth_type == DeviceAuthType.PASSWORD else Answer(200, credential)
    return Pending(job, answer)


def activate_device(
    connector: Connector | str, identity: str, password: str | None, ip: str, *, secure: bool
) -> Answer:
    """An activation from this thread, for scripts and tests: the settings read afresh, the
    claim stored as a batch of one."""
    connector_id = connector if isinstance(connector, str) else connector.pk
    entry, failures = connectors.load(connector_id, ip)
    if entry is None:
        return NOT_FOUND
    if rules.over_failure_limit(failures):
        return refused(rules.Refusal(429, rules.TOO_MANY))
    found = activation(entry, identity, password, ip, secure=secure)
    return complete(found) if isinstance(found, Pending) else found


# --- Writes -----------------------------------------------------------------------------------


def write_event(
    connector_id: str, identity: str, pairs, ip: str, ignored=(), time: int | None = None
) -> events.EventRow:
    shown = {a: short(v) for a, v in pairs}
    payload = {"values": shown}
    if ignored:
        payload["not_stored"] = list(ignored)  # no resource of that alias is defined
    return events.row(
        connector_id,
        EventType.DATA_IN,
        "Write " + ", ".join(f"{a}={v}" for a, v in shown.items())[:250],
        identity=identity,
        source_ip=ip,
        payload=payload,
        time=time,
    )


def _write_job(
    entry: CachedConnector, rows: list[ValueRow], pairs, ignored, ip, secure, **device
) -> WriteJob:
    now = now_us()
    connector_id = entry.id
    event = write_event(connector_id, device.pop("identity", ""), pairs, ip, ignored, now)
    return WriteJob(
        connector_id=connector_id,
        rows=rows,
        pairs=pairs,
        now=now,
        ip=ip,
        secure=rules.tls_or_insecure(secure),
        resources_version=entry.resources_version,
        event=event,
        **device,
    )


def token_write(
    entry: CachedConnector, token: str, pairs: list[tuple[str, str]], ip: str, *, secure: bool
) -> Pending | None:
    """A token write checked with no query (the store finds the device by the token's
    hashes), or None when the token cannot match or a value is refused: those need the
    device authenticated first (`device_write`)."""
    if not TOKEN_RE.fullmatch(token):
        return None
    try:
        rows, ignored = split_write(entry.resources, pairs)
    except WireError:
        return None
    hashes = tuple(keys.candidate_hashes(token))
    return Pending(_write_job(entry, rows, pairs, ignored, ip, secure, hashes=hashes), EMPTY)


def device_write(
    device: DeviceRow,
    pairs: list[tuple[str, str]],
    ip: str,
    *,
    secure: bool,
    protocol: str = "http",
    connection_id: str = "",
) -> Pending | Answer:
    """An authenticated device's write, or the 400 its definitions give it (logged)."""
    entry = definitions(device, ip)
    try:
        rows, ignored = split_write(entry.resources, pairs)
    except WireError as exc:
        return write_refused(device.connector_id, device.identity, pairs, ip, exc.reason)
    return _device_job(entry, device, rows, pairs, ignored, ip, secure, protocol, connection_id)


def device_write_in_loop(
    entry: CachedConnector,
    device: DeviceRow,
    pairs: list[tuple[str, str]],
    ip: str,
    *,
    secure: bool,
    protocol: str,
    connection_id: str,
) -> Pending | None:
    """`device_write` where no query may run (the event loop), with the connector's cached
    `entry` (definitions of the device's `resources_version`): None when a value is refused,
    which is `device_write`'s to log on a thread."""
    try:
        rows, ignored = split_write(entry.resources, pairs)
    except WireError:
        return None
    return _device_job(entry, device, rows, pairs, ignored, ip, secure, protocol, connection_id)


def _device_job(
    entry, device, rows, pairs, ignored, ip, secure, protocol, connection_id
) -> Pending:
    job = _write_job(
        entry,
        rows,
        pairs,
        ignored,
        ip,
        secure,
        device_id=device.id,
        identity=device.identity,
        protocol=protocol,
        connection_id=connection_id,
    )
    return Pending(job, EMPTY)


def definitions(device: DeviceRow, ip: str) -> CachedConnector:
    """The connector's entry with the definitions the device's own lookup just read."""
    entry = connectors.cached(device.connector_id)
    if entry is None or entry.resources_version != device.resources_version:
        entry, _failures = connectors.load(device.connector_id, ip)
    return entry


# --- Records ----------------------------------------------------------------------------------


def record(
    device: DeviceRow,
    points: dict[str, list[tuple[int, str]]],
    ip: str,
    protocol: str = "http",
    connection_id: str = "",
) -> Pending | Answer:
    """Historical points (timestamps in µs) of defined aliases (others are logged, not
    stored), each value checked against its definition (a refusal is logged); any
    collision with stored points refuses the whole request (the store answers 409)."""
    resources = definitions(device, ip).resources
    for alias, items in points.items():
        if alias in resources:
            for ts, value in items:
                if reason := value_error(resources[alias], value):
                    pairs = [(alias, value)]
                    return write_refused(
                        device.connector_id,
                        device.identity,
                        pairs,
                        ip,
                        f"{alias} at {ts // 1_000_000}: {reason}",
                    )
    ignored = [alias for alias in points if alias not in resources]
    kept = {alias: items for alias, items in points.items() if alias in resources}
    count = sum(len(items) for items in kept.values())
    event = events.row(
        device.connector_id,
        EventType.RECORD,
        f"Recorded {count} point{'s' if count != 1 else ''} for {', '.join(kept)[:200]}",
        identity=device.identity,
        source_ip=ip,
        payload={"points": {a: len(i) for a, i in kept.items()}, "not_stored": ignored},
    )
    job = RecordJob(
        connector_id=device.connector_id,
        device_id=device.id,
        identity=device.identity,
        points=kept,
        settable=frozenset(a for a in kept if resources[a].get("settable")),
        now=event.time,
        ip=ip,
        last_ip=device.last_ip,
        last_seen=device.last_seen,
        event=event,
        protocol=protocol,
        connection_id=connection_id,
    )
    return Pending(job, EMPTY)


# --- Reads ------------------------------------------------------------------------------------


def read(device: DeviceRow, aliases: list[str], ip: str) -> list[tuple[str, str]]:
    """Current values of the defined aliases that have one, in the order asked; logged."""
    found = current_values(device.id, definitions(device, ip).resources, aliases)
    events.record(
        device.connector_id,
        EventType.READ,
        f"Read {', '.join(aliases)[:200]}",
        identity=device.identity,
        source_ip=ip,
        payload={"aliases": aliases[:50], "answered": [a for a, _ in found]},
    )
    touch(device, ip)
    return found


def touch(device: DeviceRow, ip: str, now: int | None = None) -> None:
    rows.touch(device.id, device.last_ip, device.last_seen, ip, now_us() if now is None else now)
