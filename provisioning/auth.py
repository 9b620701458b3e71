"""Device authentication: the one place that reads credentials from a device request.

`authenticate(request, connector_id)` returns the device (with its connector and activity
loaded by the same query) or the response to send instead. On success it costs one query.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from connector import events, keys
from connector.models import Connector, EventType
from devices.models import Device, DeviceAuthType
from provisioning import ratelimit

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


def _lookup(connector_id: str, ip: str, creds: Credentials) -> Device | None:
    qs = Device.objects.select_related("connector", "activity").annotate(
        recent_failures=ratelimit.failures_subquery(ip)
    )
    if creds.token is not None:
        if not TOKEN_RE.fullmatch(creds.token):
            return None  # wrong length or alphabet: no query can match
        return qs.filter(
            connector_id=connector_id,
            auth_type=DeviceAuthType.TOKEN,
            secret_hash__in=keys.candidate_hashes(creds.token),
        ).first()
    if creds.basic is not None:
        # An identity may itself contain ":" (MAC addresses): try every split whose left part
        # is a possible identity, then check the password of the one that exists.
        splits = {}
        for index, char in enumerate(creds.basic):
            if char == ":":
                splits[creds.basic[:index]] = creds.basic[index + 1 :]
        candidates = list(
            qs.filter(
                connector_id=connector_id,
                auth_type=DeviceAuthType.PASSWORD,
                identity__in=list(splits)[:16],
            )
        )
        for device in candidates:
            if keys.hashes_match(device.secret_hash, splits[device.identity]):
                return device
    return None


def authenticate(request: HttpRequest, connector_id: str) -> Device | HttpResponse:
    ip = client_ip(request)
    creds = read_credentials(request)
    device = None
    if creds.token is not None or creds.basic is not None:
        device = _lookup(connector_id, ip, creds)
    if device is not None:
        connector = device.connector
        if not transport_ok(request, connector):
            return text(403, "plain HTTP is refused: use HTTPS")
        if ratelimit.is_limited(device.recent_failures):
            return too_many()
        if device.locked:
            return text(403, "")
        return device
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
