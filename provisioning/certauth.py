"""Device authentication by TLS client certificate (SPEC.md section 7), app side.

The TLS terminator (nginx, `ssl_verify_client optional_no_ca`) forwards the certificate as
`X-SSL-Client-Cert` (URL-escaped PEM). TrustedProxyMiddleware has already dropped that header
unless it came from a trusted proxy, so here it is believed. The CN is the identity.
"""

from __future__ import annotations

from urllib.parse import unquote

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from connector import events
from connector.identity import identity_error
from connector.models import ClientCA, Connector, EventType, now_us
from devices.models import Device, DeviceAuthType, Status
from provisioning import pki, ratelimit
from provisioning.auth import DeviceContext, client_ip, load_connector, text, too_many


def _refuse(connector: Connector, ip: str, identity: str, reason: str) -> HttpResponse:
    ratelimit.note_failure(connector.pk, ip)
    events.record(
        connector,
        EventType.AUTH_FAILED,
        f"Certificate refused: {reason}",
        identity=identity[:128],
        source_ip=ip,
        payload={"reason": reason},
    )
    return text(401, "")


def _context(device: Device, connector: Connector, failures: int) -> DeviceContext:
    activity = getattr(device, "activity", None)
    return DeviceContext(
        pk=device.pk,
        identity=device.identity,
        connector_id=connector.pk,
        state=device.state,
        locked=device.locked,
        devmode_connector=connector.devmode,
        last_ip=activity.last_ip if activity else None,
        last_seen=activity.last_seen if activity else None,
        recent_failures=failures,
        secret_hash="",
        resources=connector.resources or {},
        resources_version=connector.resources_version,
    )


def authenticate_certificate(
    request: HttpRequest, connector_id: str, header: str
) -> DeviceContext | HttpResponse:
    ip = client_ip(request)
    connector, failures = load_connector(connector_id, ip)
    if connector is None:
        return text(404)
    if not request.is_secure():
        return text(403, "client certificates need TLS")
    if ratelimit.is_limited(failures):
        return too_many()
    now = timezone.now()
    try:
        certs = pki.load_certificates(unquote(header))
        info = pki.check_client_certificate(certs[0], now)
    except pki.PKIError as exc:
        return _refuse(connector, ip, "", str(exc))
    identity = info.common_name
    if reason := identity_error(identity, connector.identity_format):
        return _refuse(connector, ip, identity, f"CN {identity[:60]!r}: {reason}")
    if connector.pki_enabled:
        roots = [
            pki.load_certificates(ca.pem)[0]
            for ca in ClientCA.objects.filter(connector_id=connector.pk)
        ]
        try:
            pki.verify_chain(certs[0], certs[1:], roots, now)
        except pki.PKIError as exc:
            return _refuse(connector, ip, identity, str(exc))
    device = (
        Device.objects.select_related("activity")
        .filter(connector_id=connector.pk, identity=identity)
        .first()
    )
    if device is not None and device.cert_fingerprint == info.fingerprint:
        if device.state == Status.PROVISIONED or device.state == Status.DEVMODE:
            return _locked_or(device, connector, failures)
        # Whitelisted with this very certificate (CSV import or auth.key): first contact.
    outcome = _first_contact(connector, device, info, ip)
    if isinstance(outcome, HttpResponse):
        return outcome
    return _locked_or(outcome, connector, failures)


def _locked_or(device: Device, connector: Connector, failures: int):
    if device.locked:
        return text(403, "")
    return _context(device, connector, failures)


def _first_contact(connector: Connector, device: Device | None, info: pki.CertInfo, ip: str):
    """Store the certificate and provision, or refuse (SPEC.md section 7)."""
    identity = info.common_name
    fields = {
        "state": Status.PROVISIONED,
        "auth_type": DeviceAuthType.CERTIFICATE,
        "secret_hash": "",
        "cert_pem": info.pem,
        "cert_fingerprint": info.fingerprint,
        "cert_not_after": info.not_after,
        "provisioned_at": timezone.now(),
    }
    if device is None:
        if not connector.provisioning_enabled:
            return _refuse(connector, ip, identity, "provisioning is disabled")
        if not (connector.presenter_identity or connector.pki_enabled):
            return _refuse(connector, ip, identity, "identity is not whitelisted")
        try:
            with transaction.atomic():
                device = Device.objects.create(connector=connector, identity=identity, **fields)
                _provisioned_event(connector, identity, ip, info)
        except IntegrityError:  # registered by a concurrent first contact
            return _refuse(connector, ip, identity, "identity registered concurrently")
        return device
    rotation = (
        connector.pki_enabled
        and device.cert_fingerprint
        and device.cert_not_after is not None
        and info.not_before > _stored_not_before(device)
    )
    if device.cert_fingerprint and device.cert_fingerprint != info.fingerprint and not rotation:
        return _refuse(connector, ip, identity, "the certificate is not the one stored")
    now = now_us()
    with transaction.atomic():
        claimable = Q(state=Status.REPROVISION) | Q(state=Status.WHITELISTED) & (
            Q(expire__isnull=True) | Q(expire__gte=now)
        )
        if rotation:  # a newer certificate from the connector's CA replaces the old one
            claimable = Q(state__in=[Status.PROVISIONED, Status.DEVMODE]) | claimable
        won = Device.objects.filter(claimable, pk=device.pk).update(**fields)
        if not won:
            return _refuse(
                connector,
                ip,
                identity,
                "identity is provisioned with another credential, or expired",
            )
        if rotation:
            events.record(
                connector,
                EventType.DEVICE_UPDATED,
                f"Certificate of {identity} rotated",
                identity=identity,
                source_ip=ip,
                payload={"fingerprint": info.fingerprint},
            )
        else:
            _provisioned_event(connector, identity, ip, info)
    device.refresh_from_db()
    return device


def _stored_not_before(device: Device):
    try:
        return pki.load_certificates(device.cert_pem)[0].not_valid_before_utc
    except pki.PKIError:
        return timezone.now()


def _provisioned_event(connector, identity, ip, info) -> None:
    events.record(
        connector,
        EventType.PROVISIONED,
        f"Provisioned {identity} (certificate)",
        identity=identity,
        source_ip=ip,
        payload={"auth_type": "certificate", "fingerprint": info.fingerprint},
    )
