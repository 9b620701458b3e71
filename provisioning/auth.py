"""Device authentication: the one place that reads credentials from a device request.

`authenticate(request, connector_id)` returns the device (with its connector and activity
loaded by the same query) or the response to send instead. On success it costs one query.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse

from connector import events, keys
from connector.models import Connector, EventType
from connector.sql import run as sql_run
from connector.sql import tables
from devices.models import Device, DeviceActivity, DeviceAuthType
from provisioning import ratelimit
from provisioning.models import AuthFailure

TOKEN_RE = re.compile(r"[A-Za-z0-9]{40}")


@dataclass(frozen=True)
class Credentials:
    token: str | None = None
    basic: str | None = None  # "identity:password" as sent
    malformed: bool = False


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
        if not sep:
            return Credentials(malformed=True)
        if user == "":
            return Credentials(token=password)  # Basic base64(":<token>")
        return Credentials(basic=decoded)
    return Credentials(malformed=True)


def client_ip(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR", "") or "0.0.0.0"  # noqa: S104 (unknown peer)


def transport_ok(request: HttpRequest, connector: Connector) -> bool:
    """TLS, or plain HTTP allowed by developer mode or the insecure development setting."""
    return request.is_secure() or connector.devmode or settings.DEVICE_API_INSECURE


def text(status: int, body: str = "", headers: dict | None = None) -> HttpResponse:
    response = HttpResponse(body, status=status, content_type="text/plain; charset=utf-8")
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def too_many() -> HttpResponse:
    return text(429, "too many failed attempts", {"Retry-After": str(ratelimit.retry_after())})


@dataclass(frozen=True)
class DeviceContext:
    """What the device API needs of an authenticated device, read by one query."""

    pk: int
    identity: str
    connector_id: str
    state: str
    locked: bool
    devmode_connector: bool
    last_ip: str | None
    last_seen: int | None
    recent_failures: int | None
    secret_hash: str = ""
    resources: dict | None = None  # the connector's resource definitions
    resources_version: int = 0

    @classmethod
    def from_row(cls, row) -> DeviceContext:
        *head, resources, version = row
        if isinstance(resources, str):
            resources = json.loads(resources)
        return cls(*head, resources=resources or {}, resources_version=version)


CONNECTOR_FIELDS = (
    "id",
    "devmode",
    "auth_type",
    "provisioning_enabled",
    "presenter_identity",
    "ip_whitelisting_enabled",
    "ip_allowed",
    "id_prefix",
    "id_type",
    "id_length",
    "id_casing",
    "pki_enabled",
    "resources",
    "resources_version",
)


# What activation checks of a connector: a digest of these tells whether they changed.
FINGERPRINT_FIELDS = tuple(
    f for f in CONNECTOR_FIELDS if f not in ("id", "resources", "resources_version")
)
# Connector id -> (the connector as last read, the fingerprint of its settings).
_CONNECTORS: dict[str, tuple[Connector, str]] = {}


def fingerprint_sql(alias: str) -> str:
    """An expression for a fingerprint of a connector row's activation settings: their md5
    on PostgreSQL, on SQLite (no md5) the settings themselves, each quoted as a literal."""
    qn = connection.ops.quote_name
    columns = [f"{alias}.{qn(f)}" for f in FINGERPRINT_FIELDS]
    if connection.vendor == "postgresql":
        return f"md5(ROW({', '.join(columns)})::text)"
    return " || ',' || ".join(f"quote({column})" for column in columns)


def load_connector(connector_id: str, ip: str) -> tuple[Connector | None, int]:
    """The connector's device-facing settings and this address's failure count: one query.
    The connector is also kept with its fingerprint (see `cached_connector`)."""
    rows = sql_run(_connector_sql(), [ip, ratelimit.current_window(), connector_id])
    if not rows:
        _CONNECTORS.pop(connector_id, None)
        return None, 0
    row = rows[0]
    values = dict(zip(CONNECTOR_FIELDS, row, strict=False))
    for name in ("ip_allowed", "resources"):
        if isinstance(values[name], str):
            values[name] = json.loads(values[name])
    connector = Connector(**values)
    _CONNECTORS[connector_id] = (connector, row[-2])
    return connector, row[-1] or 0


@lru_cache(maxsize=1)
def _connector_sql() -> str:
    qn = connection.ops.quote_name
    table, failure = tables(Connector, AuthFailure)
    return (
        f"SELECT {', '.join('c.' + qn(f) for f in CONNECTOR_FIELDS)}, {fingerprint_sql('c')}, "  # noqa: S608
        f"(SELECT f.count FROM {failure} f WHERE f.connector_id = c.id AND f.ip = %s"
        f" AND f.window_start = %s) FROM {table} c WHERE c.id = %s"
    )


def cached_connector(connector_id: str) -> tuple[Connector, str] | None:
    """The connector as `load_connector` last read it (in this process), and its
    fingerprint; for checks whose result a batch confirms (the fingerprint unchanged)
    before it acts."""
    return _CONNECTORS.get(connector_id)


@lru_cache(maxsize=64)
def lookup_sql(where: str) -> str:
    """Device + connector + activity + failures in the current window, in one statement.

    Written out rather than built by the ORM: compiling the equivalent queryset cost more
    than the rest of a device write put together.
    """
    device, conn, activity, failure = tables(Device, Connector, DeviceActivity, AuthFailure)
    return (
        f"SELECT d.id, d.identity, d.connector_id, d.state, d.locked, c.devmode, "  # noqa: S608
        f"a.last_ip, a.last_seen, "
        f"(SELECT f.count FROM {failure} f WHERE f.connector_id = d.connector_id"
        f" AND f.ip = %s AND f.window_start = %s) AS failures, d.secret_hash, "
        f"c.resources, c.resources_version "
        f"FROM {device} d JOIN {conn} c ON c.id = d.connector_id "
        f"LEFT JOIN {activity} a ON a.device_id = d.id "
        f"WHERE d.connector_id = %s AND d.auth_type = %s AND {where}"
    )


def _fetch(where: str, params: list) -> list[DeviceContext]:
    return [DeviceContext.from_row(row) for row in sql_run(lookup_sql(where), params)]


def _lookup(connector_id: str, ip: str, creds: Credentials) -> DeviceContext | None:
    window = ratelimit.current_window()
    if creds.token is not None:
        if not TOKEN_RE.fullmatch(creds.token):
            return None  # wrong length or alphabet: no query can match
        hashes = keys.candidate_hashes(creds.token)
        found = _fetch(
            token_where(len(hashes)),
            [ip, window, connector_id, DeviceAuthType.TOKEN, *hashes],
        )
        return found[0] if found else None
    if creds.basic is not None:
        # An identity may itself contain ":" (MAC addresses): try every split whose left part
        # is a possible identity, then check the password of the one that exists.
        splits = {}
        for index, char in enumerate(creds.basic):
            if char == ":":
                splits[creds.basic[:index]] = creds.basic[index + 1 :]
        names = list(splits)[:16]
        found = _fetch(
            f"d.identity IN ({', '.join(['%s'] * len(names))})",
            [ip, window, connector_id, DeviceAuthType.PASSWORD, *names],
        )
        for device in found:
            if keys.hashes_match(device.secret_hash, splits[device.identity]):
                return device
    return None


def authenticate(request: HttpRequest, connector_id: str) -> DeviceContext | HttpResponse:
    ip = client_ip(request)
    creds = read_credentials(request)
    cert = request.META.get("HTTP_X_SSL_CLIENT_CERT")  # kept only from trusted proxies
    if cert and creds == Credentials():
        from provisioning.certauth import authenticate_certificate

        return authenticate_certificate(request, connector_id, cert)
    device = None
    if creds.token is not None or creds.basic is not None:
        device = _lookup(connector_id, ip, creds)
    if device is None:
        return refuse(request, connector_id, creds)
    return refusal_for(request, device) or device


def refusal_for(request: HttpRequest, device: DeviceContext) -> HttpResponse | None:
    if not (request.is_secure() or device.devmode_connector or settings.DEVICE_API_INSECURE):
        return text(403, "plain HTTP is refused: use HTTPS")
    if ratelimit.is_limited(device.recent_failures):
        return too_many()
    if device.locked:
        return text(403, "")
    return None


def refuse(request: HttpRequest, connector_id: str, creds: Credentials) -> HttpResponse:
    """No device matched: 404 for an unknown host, else count the failure and answer 401."""
    ip = client_ip(request)
    connector = Connector.objects.filter(pk=connector_id).first()
    if connector is None:
        return text(404)
    if not transport_ok(request, connector):
        return text(403, "plain HTTP is refused: use HTTPS")
    count = ratelimit.note_failure(connector_id, ip)
    if ratelimit.is_limited(count - 1):
        return too_many()
    reason = (
        "no credentials"
        if not (creds.token or creds.basic or creds.malformed)
        else ("malformed credentials" if creds.malformed else "unknown credentials")
    )
    events.record(
        connector,
        EventType.AUTH_FAILED,
        f"Authentication failed: {reason}",
        source_ip=ip,
        payload={"reason": reason},
    )
    return text(401, "")


def token_where(count: int) -> str:
    # The index's own condition, word for word, lets SQLite use that partial index.
    return f"NOT (d.secret_hash = '') AND d.secret_hash IN ({', '.join(['%s'] * count)})"
