"""Device authentication by token or password: the one place that reads credentials from a
device request and finds the device they name. (Certificates: `provisioning.certauth`.)

`authenticate(request, connector_id)` returns the device (with its connector's developer mode,
and its activity, read by the same query) or the answer to send
instead. On success it costs one query.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from django.conf import settings
from django.http import HttpRequest

from connector import events, keys
from connector.models import Connector, EventType
from connector.sql import run as sql_run
from connector.sql import run_packed, tables
from devices.models import Device, DeviceActivity, DeviceAuthType
from provisioning import connectors, ratelimit, rules
from provisioning.answers import NOT_FOUND, Answer, refused, text, too_many

TOKEN_RE = re.compile(r"[A-Za-z0-9]{40}")


@dataclass(frozen=True, slots=True)
class Credentials:
    token: str | None = None
    basic: str | None = None  # "identity:password" as sent
    malformed: bool = False

    @property
    def reason(self) -> str:
        """Why they matched no device, in words that tell nothing of any identity."""
        if self.malformed:
            return "malformed credentials"
        if self.token or self.basic:
            return "unknown credentials"
        return "no credentials"


def read_credentials(request: HttpRequest) -> Credentials:
    """X-Exosite-CIK, `Authorization: token …` or `Authorization: Basic …`."""
    cik = request.META.get("HTTP_X_EXOSITE_CIK")
    if cik is not None:
        return Credentials(token=cik.strip())
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header:
        return Credentials()
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "token":
        return Credentials(token=value.strip())
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return Credentials(malformed=True)
        user, sep, password = decoded.partition(":")
        if not sep or "\x00" in decoded:  # no identity or credential holds a NUL
            return Credentials(malformed=True)
        if user == "":
            return Credentials(token=password)  # Basic base64(":<token>")
        return Credentials(basic=decoded)
    return Credentials(malformed=True)


def client_ip(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR", "") or "0.0.0.0"  # noqa: S104 (unknown peer)


class DeviceRow(NamedTuple):
    """What the device API needs of an authenticated device: the columns of `lookup_sql`."""

    id: int
    identity: str
    connector_id: str
    state: str
    locked: bool
    devmode: bool  # the connector's
    last_ip: str | None
    last_seen: int | None
    secret_hash: str
    resources_version: int  # the connector's definitions, as the lookup read them
    auth_type: str
    events_enabled: bool  # the connector's: whether its changes add outbox rows


@lru_cache(maxsize=256)
def lookup_sql(where: str, *, any_connector: bool = False) -> str:
    """Device + connector + activity in one statement; `where` picks the device. The
    parameters: connector, then `where`'s (only `where`'s with `any_connector`: the caller
    checks each row's connector).

    Written out rather than built by the ORM: compiling the equivalent queryset cost more
    than the rest of a device write put together.
    """
    device, conn, activity = tables(Device, Connector, DeviceActivity)
    return (
        f"SELECT d.id, d.identity, d.connector_id, d.state, d.locked, c.devmode, "  # noqa: S608
        f"a.last_ip, a.last_seen, d.secret_hash, "
        f"c.resources_version, d.auth_type, c.events_enabled "
        f"FROM {device} d JOIN {conn} c ON c.id = d.connector_id "
        f"LEFT JOIN {activity} a ON a.device_id = d.id "
        f"WHERE {'' if any_connector else 'd.connector_id = %s AND '}{where}"
    )


def token_where(count: int) -> str:
    # The index's own condition, word for word, lets SQLite use that partial index.
    marks = ", ".join(["%s"] * count)
    return f"d.auth_type = %s AND NOT (d.secret_hash = '') AND d.secret_hash IN ({marks})"


def find(connector_id: str, ip: str, where: str, params: list) -> list[DeviceRow]:
    rows = sql_run(lookup_sql(where), [connector_id, *params])
    return [DeviceRow(*row) for row in rows]


def by_token_hashes(connector_id: str, ip: str, hashes) -> DeviceRow | None:
    found = find(connector_id, ip, token_where(len(hashes)), [DeviceAuthType.TOKEN, *hashes])
    return found[0] if found else None


def by_id(connector_id: str, ip: str, device_id: int) -> DeviceRow | None:
    found = find(connector_id, ip, "d.id = %s", [device_id])
    return found[0] if found else None


def writers(jobs) -> dict[tuple, DeviceRow]:
    """The devices of a batch of writes (jobs with `connector_id` and either `hashes` or
    `device_id`) in at most two statements, keyed `(connector, "id", device id)` and
    `(connector, "hash", secret hash)`: a row counts only for its own connector."""
    ids = [job.device_id for job in jobs if not job.hashes]
    hashes = [h for job in jobs for h in job.hashes]
    found: dict[tuple, DeviceRow] = {}
    if ids:
        where = f"d.id IN ({', '.join(['%s'] * len(ids))})"
        for row in run_packed(lookup_sql(where, any_connector=True), ids, DeviceRow._fields):
            device = DeviceRow(*row)
            found[(device.connector_id, "id", device.id)] = device
    if hashes:
        # The connectors too, although each row's is checked: the index is on (connector,
        # secret hash), and without its first column SQLite scanned the whole index, every
        # token device of every connector, for each batch.
        named = list({job.connector_id for job in jobs if job.hashes})
        where = f"d.connector_id IN ({', '.join(['%s'] * len(named))}) AND "
        where += token_where(len(hashes))
        params = [*named, DeviceAuthType.TOKEN, *hashes]
        rows = run_packed(lookup_sql(where, any_connector=True), params, DeviceRow._fields)
        for row in rows:
            device = DeviceRow(*row)
            found[(device.connector_id, "hash", device.secret_hash)] = device
    return found


def writer(found: dict[tuple, DeviceRow], job) -> DeviceRow | None:
    """The job's device among `writers(jobs)`."""
    if not job.hashes:
        return found.get((job.connector_id, "id", job.device_id))
    for candidate in job.hashes:
        if (device := found.get((job.connector_id, "hash", candidate))) is not None:
            return device
    return None


def _lookup(
    connector_id: str, ip: str, creds: Credentials, secure: bool
) -> DeviceRow | Answer | None:
    if creds.token is not None:
        if not TOKEN_RE.fullmatch(creds.token):
            return None  # wrong length or alphabet: no query can match
        return by_token_hashes(connector_id, ip, keys.candidate_hashes(creds.token))
    if creds.basic is not None:
        return _by_password(connector_id, ip, creds.basic, secure)
    return None


def _by_password(connector_id: str, ip: str, basic: str, secure: bool) -> DeviceRow | Answer | None:
    """The device whose identity and password these are. A password is judged by its own
    identity's failures before it is checked (`rules.password_refused`), never by those of
    other devices behind the same address."""
    # An identity may itself contain ":" (MAC addresses): try every split whose left part
    # is a possible identity, then check the password of the one that exists.
    splits = {}
    for index, char in enumerate(basic):
        if char == ":":
            splits[basic[:index]] = basic[index + 1 :]
    names = list(splits)[:16]
    where = f"d.auth_type = %s AND d.identity IN ({', '.join(['%s'] * len(names))})"
    window = settings.DEVICE_AUTH_FAILURE_WINDOW
    for device in find(connector_id, ip, where, [DeviceAuthType.PASSWORD, *names]):
        counts = ratelimit.guesses(connector_id, device.identity, ip, window)
        if rules.password_refused(counts, known=device.last_ip == ip):
            return too_many()
        if keys.hashes_match(device.secret_hash, splits[device.identity]):
            return device
        if rules.transport_allowed(secure, device.devmode) and rules.retries_own_identity(
            ratelimit.note_guess(connector_id, device.identity, ip, window)
        ):
            return too_many()
        return refuse_unknown(connector_id, ip, secure, "unknown credentials", device.identity)
    return None


def authenticate(request: HttpRequest, connector_id: str) -> DeviceRow | Answer:
    """The device a token or password request comes from, or the answer refusing it."""
    creds = read_credentials(request)
    return authenticate_credentials(connector_id, client_ip(request), creds, request.is_secure())


def authenticate_credentials(
    connector_id: str, ip: str, creds: Credentials, secure: bool
) -> DeviceRow | Answer:
    """The device these credentials name, or the answer refusing them (any entry: HTTP
    headers or an MQTT CONNECT)."""
    device = _lookup(connector_id, ip, creds, secure)
    if isinstance(device, Answer):
        return device
    if device is None:
        return refuse_unknown(connector_id, ip, secure, creds.reason)
    if refusal := refusal_for(device, secure):
        return refused(refusal)
    return device


def refusal_for(device: DeviceRow, secure: bool) -> rules.Refusal | None:
    return rules.device_refusal(secure=secure, devmode=device.devmode, locked=device.locked)


def refuse_unknown(
    connector_id: str, ip: str, secure: bool, reason: str, identity: str = ""
) -> Answer:
    """No device matched (or, for `identity`, its password did not): 404 for an unknown
    host, else count the address's failure, log it and answer 401 with a reason that tells
    nothing of any identity."""
    found, _failures = connectors.load(connector_id, ip)
    if found is None:
        return NOT_FOUND
    if not rules.transport_allowed(secure, found.connector.devmode):
        return text(403, rules.PLAIN_HTTP)
    count = ratelimit.note_failure(connector_id, ip)
    if rules.over_failure_limit(count - 1):
        return refused(rules.Refusal(429, rules.TOO_MANY))
    events.record(
        connector_id,
        EventType.AUTH_FAILED,
        f"Authentication failed: {'wrong password' if identity else reason}",
        identity=identity[:128],
        source_ip=ip,
        payload={"reason": reason},
    )
    return text(401, reason)
