"""Device API state changes: activation, writes, reads, records. One function each."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from functools import lru_cache

from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from connector import events, keys
from connector.identity import identity_error
from connector.models import AuthType, Connector, Event, EventType, now_us
from connector.sql import insert_rows, insert_sql, typed_placeholders
from connector.sql import run as sql_run
from devices.models import AliasValue, DataPoint, Device, DeviceActivity, DeviceAuthType, Status
from devices.resources import value_error
from provisioning import auth, batch, longpoll, ratelimit
from provisioning.auth import DeviceContext
from provisioning.wire import WireError, encode_pairs

MIN_PASSWORD_BYTES = 20
# Last IP / last seen are rewritten at most this often per device (µs), not on every request.
ACTIVITY_EVERY_US = batch.ACTIVITY_EVERY_US
# Longest value kept in an event's payload (the stored value is never cut).
EVENT_VALUE_CHARS = 200


@dataclass
class Outcome:
    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    # When set, the outcome holds only once this job is stored (`provisioning.batch`).
    pending: batch.ClaimJob | None = None


def ip_allowed(connector: Connector, ip: str) -> bool:
    if not connector.ip_whitelisting_enabled:
        return True
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    for entry in connector.ip_allowed:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def _fail(
    connector: Connector,
    identity: str,
    ip: str,
    status: int,
    reason: str,
    *,
    count: bool = False,
    event_type: str = EventType.PROVISION_FAILED,
) -> Outcome:
    """A refused activation: logged with its reason; guessing-type failures are counted."""
    if count:
        ratelimit.note_failure(connector.pk, ip)
    events.record(
        connector,
        event_type,
        f"Provision of {identity[:60]} refused: {reason}",
        identity=identity[:128],
        source_ip=ip,
        payload={"reason": reason, "status": status},
    )
    return Outcome(status, reason)


def activation_refusal(
    connector: Connector, identity: str, password: str | None, ip: str
) -> tuple[int, str, bool] | None:
    """Why the connector's settings refuse this activation, as (status, reason, counted as
    a guess), or None. Reads nothing, writes nothing."""
    if connector.auth_type == AuthType.CERTIFICATE:
        return 415, "this connector uses TLS client certificates", False
    if not connector.provisioning_enabled:
        return 403, "provisioning is disabled", False
    if not ip_allowed(connector, ip):
        return 403, f"address {ip} is not allowed to provision", False
    if reason := identity_error(identity, connector.identity_format):
        return 404, reason, True
    if connector.auth_type == AuthType.PASSWORD:
        if password is None:
            return 415, "this connector expects a password", False
        if len(password.encode()) < MIN_PASSWORD_BYTES:
            return 415, f"the password is shorter than {MIN_PASSWORD_BYTES} bytes", False
    elif password is not None:
        return 415, "this connector provisions tokens, not passwords", False
    return None


def activate_device(
    connector: Connector,
    identity: str,
    password: str | None,
    ip: str,
    *,
    secure: bool,
    defer: bool = False,
    fingerprint: str = "",
) -> Outcome:
    """`POST /provision/activate` after transport, rate and content-type checks (SPEC §3).

    The claim is a `batch.ClaimJob`, which claims only while the connector's settings still
    have the `fingerprint` they were checked with (see `auth.load_connector`; "": not
    checked) and the address is not over its failure limit. With `defer`, it is returned
    unrun as the outcome's `pending` job, for the server to send with other activations: the
    outcome holds once it is stored, and when it was not, the caller asks again without
    `defer` to learn why."""
    if refusal := activation_refusal(connector, identity, password, ip):
        status, reason, counted = refusal
        return _fail(connector, identity, ip, status, reason, count=counted)
    if password is not None:
        credential, auth_type = password, DeviceAuthType.PASSWORD
    else:
        credential, auth_type = keys.new_token(40), DeviceAuthType.TOKEN
    # Provisioned over plain HTTP (developer mode) is shown as such.
    state = Status.PROVISIONED if secure else Status.DEVMODE
    now, now_dt = now_us(), timezone.now()
    fields = {
        "state": state,
        "auth_type": auth_type,
        "secret_hash": keys.keyed_hash(credential),
        "provisioned_at": now_dt,
    }
    event = events.row(
        connector,
        EventType.PROVISIONED,
        f"Provisioned {identity} ({auth_type})",
        identity=identity,
        source_ip=ip,
        payload={"auth_type": auth_type, "secure": secure},
    )
    job = batch.ClaimJob(
        connector.pk,
        identity,
        state,
        auth_type,
        fields["secret_hash"],
        now_dt,
        now,
        ip,
        event[7],
        event[8],
        fingerprint,
    )
    if defer:
        return replace(_provisioned(auth_type, credential), pending=job)
    if connection.vendor == "postgresql" and batch.claim_jobs([job])[0]:
        return _provisioned(auth_type, credential)  # one statement: claim, last seen, event
    with transaction.atomic():
        # Claim it if the settings just read allow it (a batch checked those it cached),
        # else find out why not.
        claimed = sql_run(*batch.claim_statement(job))
        device_id = claimed[0][0] if claimed else None
        if device_id is None:
            existing = (
                Device.objects.filter(connector_id=connector.pk, identity=identity)
                .values("locked", "state")
                .first()
            )
            if existing is None:
                if not connector.presenter_identity:
                    return _fail(
                        connector, identity, ip, 404, "identity is not whitelisted", count=True
                    )
                try:
                    with transaction.atomic():
                        device_id = Device.objects.create(
                            connector=connector, identity=identity, **fields
                        ).pk
                except IntegrityError:  # registered by a concurrent request
                    return _fail(
                        connector, identity, ip, 409, "identity already provisioned", count=True
                    )
            elif existing["locked"]:
                return _fail(connector, identity, ip, 403, "device is locked")
            elif existing["state"] == Status.WHITELISTED:
                return _fail(
                    connector,
                    identity,
                    ip,
                    409,
                    "activation window expired",
                    count=True,
                    event_type=EventType.EXPIRED,
                )
            else:
                return _fail(
                    connector, identity, ip, 409, "identity already provisioned", count=True
                )
        activity = [(device_id, ip, now)]
        insert_rows(DeviceActivity, batch.ACTIVITY_COLUMNS, activity, **ACTIVITY_UPSERT)
        insert_rows(Event, events.COLUMNS, [event])
    return _provisioned(auth_type, credential)


def _provisioned(auth_type: str, credential: str) -> Outcome:
    if auth_type == DeviceAuthType.PASSWORD:
        return Outcome(204)  # the password the device sent is its credential
    return Outcome(200, credential)


def touch(device: DeviceContext, ip: str, now: int) -> None:
    """Record last IP / last seen in the narrow activity row, at most once a minute."""
    if device.last_ip == ip and now - (device.last_seen or 0) < ACTIVITY_EVERY_US:
        return
    insert_rows(DeviceActivity, batch.ACTIVITY_COLUMNS, [(device.pk, ip, now)], **ACTIVITY_UPSERT)


def _short(value: str) -> str:
    return value if len(value) <= EVENT_VALUE_CHARS else value[:EVENT_VALUE_CHARS] + "…"


VALUE_COLUMNS, UPSERT, ACTIVITY_UPSERT = batch.VALUE_COLUMNS, batch.UPSERT, batch.ACTIVITY_UPSERT
# connector id -> (resources version, definitions): lets the one-statement write check values
# before it runs; the statement itself verifies the version is still current.
_RESOURCES: dict[str, tuple[int, dict]] = {}


def split_write(resources: dict, pairs: list[tuple[str, str]]):
    """(rows to store as (alias, reported, set), undefined aliases) for a device write.

    Raises WireError(400) naming the first value its definition refuses: nothing is stored.
    """
    stored, ignored = [], []
    for alias, value in pairs:
        definition = resources.get(alias)
        if definition is None:
            ignored.append(alias)  # logged, not stored (SPEC.md section 4)
            continue
        if reason := value_error(definition, value):
            raise WireError(400, f"{alias}: {reason}")
        stored.append((alias, value, value if definition.get("settable") else None))
    return stored, ignored


def write_event(connector_id: str, identity: str, pairs, ip: str, ignored=()):
    payload = {"values": {a: _short(v) for a, v in pairs}}
    if ignored:
        payload["not_stored"] = list(ignored)  # no resource of that alias is defined
    return events.row(
        connector_id,
        EventType.DATA_IN,
        "Write " + ", ".join(f"{a}={_short(v)}" for a, v in pairs)[:250],
        identity=identity,
        source_ip=ip,
        payload=payload,
    )


def write_job(connector_id: str, token: str, pairs, ip: str, *, secure: bool):
    """A token write made ready for `provisioning.batch` (PostgreSQL), or None when it needs
    the ordinary path: definitions not yet known here, a value they refuse (the device is
    authenticated before its value is refused), or nothing to store."""
    cached = _RESOURCES.get(connector_id)
    if cached is None or not auth.TOKEN_RE.fullmatch(token):
        return None
    version, resources = cached
    try:
        stored, ignored = split_write(resources, pairs)
    except WireError:
        return None
    if not stored:
        return None
    _connector, now, _type, _identity, _ip, _actor, _email, summary, payload = write_event(
        connector_id, "", pairs, ip, ignored
    )
    return batch.WriteJob(
        connector_id,
        keys.candidate_hashes(token),
        stored,
        now,
        ip,
        secure,
        version,
        summary,
        payload,
    )


@lru_cache(maxsize=32)
def _write_sql(nrows: int) -> str:
    """PostgreSQL: values, the notification that wakes long polls on them, and the event."""
    qn = connection.ops.quote_name
    upsert = insert_sql(AliasValue, VALUE_COLUMNS, nrows, **UPSERT)
    columns = ", ".join(qn(c) for c in events.COLUMNS)
    return (
        f"WITH stored AS ({upsert} RETURNING device_id, alias), "  # noqa: S608
        f"notified AS ({longpoll.NOTIFY_STORED}) "
        f"INSERT INTO {qn(Event._meta.db_table)} ({columns}) "
        f"SELECT {typed_placeholders(Event, events.COLUMNS)} FROM (SELECT count(*) FROM notified) n"
    )


def write_values(device: DeviceContext, pairs: list[tuple[str, str]], ip: str) -> None:
    """Store a device write (one timestamp for all aliases) and its event.

    Only aliases with a resource definition are stored, each value checked against it;
    the others are logged. No explicit transaction: BEGIN and COMMIT would be two more round
    trips on the hottest path (≤ 4 statements per write). On PostgreSQL values and event are
    one statement; on SQLite the event is inserted only after the values statement succeeded,
    so no event describes a write that did not happen.
    """
    _RESOURCES[device.connector_id] = (device.resources_version, device.resources or {})
    stored, ignored = split_write(device.resources or {}, pairs)
    now = now_us()
    values = [(device.pk, a, reported, set_value, now) for a, reported, set_value in stored]
    event = write_event(device.connector_id, device.identity, pairs, ip, ignored)
    if values and connection.vendor == "postgresql":
        # One statement, so one transaction, one round trip: values, their event, and the
        # notification that wakes long polls on them (delivered when it commits).
        sql = _write_sql(len(values))
        sql_run(sql, [*(p for value in values for p in value), *event], fetch=False)
    else:
        insert_rows(AliasValue, VALUE_COLUMNS, values, **UPSERT)
        insert_rows(Event, events.COLUMNS, [event])
        longpoll.announce_local(device.pk, [alias for alias, _r, _s in stored])
    touch(device, ip, now)


def current_value(definition: dict, reported: str | None, set_value: str | None) -> str | None:
    """What a read answers: the cloud's `set` for settable resources, else the device's
    `reported`; the definition's initial value until there is one."""
    value = set_value if definition.get("settable") else reported
    return value if value is not None else definition.get("initial")


def current_value_at(device_pk: int, alias: str, definition: dict) -> tuple[str, int] | None:
    """What a read of one alias answers, with the time it was stored (µs); None without a
    stored value (a long poll waits for one, the initial value is not news)."""
    row = (
        AliasValue.objects.filter(device_id=device_pk, alias=alias)
        .values_list("reported", "set", "timestamp")
        .first()
    )
    if row is None:
        return None
    value = current_value(definition, row[0], row[1])
    return None if value is None else (value, row[2])


def read_values(device: DeviceContext, aliases: list[str], ip: str) -> list[tuple[str, str]]:
    """Current values of the defined aliases that have one, in the order asked."""
    resources = device.resources or {}
    wanted = [a for a in dict.fromkeys(aliases) if a in resources]
    rows = {
        alias: (reported, set_value)
        for alias, reported, set_value in AliasValue.objects.filter(
            device_id=device.pk, alias__in=wanted
        ).values_list("alias", "reported", "set")
    }
    found = []
    for alias in wanted:
        value = current_value(resources[alias], *rows.get(alias, (None, None)))
        if value is not None:
            found.append((alias, value))
    events.record(
        device.connector_id,
        EventType.READ,
        f"Read {', '.join(aliases)[:200]}",
        identity=device.identity,
        source_ip=ip,
        payload={"aliases": aliases[:50], "answered": [a for a, _ in found]},
    )
    touch(device, ip, now_us())
    return found


def record_values(
    device: DeviceContext, points: dict[str, list[tuple[int, str]]], ip: str
) -> Outcome:
    """Historical points of defined aliases (others are logged, not stored), each value checked
    against its definition; any collision with stored points refuses the whole request."""
    resources = device.resources or {}
    for alias, items in points.items():
        if alias in resources:
            for ts, value in items:
                if reason := value_error(resources[alias], value):
                    return Outcome(400, f"{alias} at {ts}: {reason}")
    ignored = [alias for alias in points if alias not in resources]
    points = {alias: items for alias, items in points.items() if alias in resources}
    try:
        with transaction.atomic():
            if conflict := _record_conflicts(device, points):
                return conflict
            DataPoint.objects.bulk_create(
                [
                    DataPoint(device_id=device.pk, alias=alias, timestamp=ts * 1_000_000, value=v)
                    for alias, items in points.items()
                    for ts, v in items
                ]
            )
            count = sum(len(items) for items in points.values())
            events.record(
                device.connector_id,
                EventType.RECORD,
                f"Recorded {count} point{'s' if count != 1 else ''} for {', '.join(points)[:200]}",
                identity=device.identity,
                source_ip=ip,
                payload={"points": {a: len(i) for a, i in points.items()}, "not_stored": ignored},
            )
    except IntegrityError:  # a concurrent record stored the same points first
        return _record_conflicts(device, points) or Outcome(409, "")
    touch(device, ip, now_us())
    return Outcome(204)


def _record_conflicts(
    device: DeviceContext, points: dict[str, list[tuple[int, str]]]
) -> Outcome | None:
    wanted = Q()
    for alias, items in points.items():
        wanted |= Q(alias=alias, timestamp__in=[ts * 1_000_000 for ts, _ in items])
    clashes: dict[str, list[int]] = {}
    stored = DataPoint.objects.filter(wanted, device_id=device.pk)
    for alias, ts in stored.values_list("alias", "timestamp"):
        clashes.setdefault(alias, []).append(ts // 1_000_000)
    if not clashes:
        return None
    body = encode_pairs(
        (a, ",".join(str(t) for t in sorted(clashes[a]))) for a in points if a in clashes
    )
    return Outcome(409, body)
