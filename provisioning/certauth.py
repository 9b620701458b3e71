"""Device authentication by TLS client certificate (SPEC.md section 7), app side.

The TLS terminator (nginx, `ssl_verify_client optional_no_ca`) forwards the certificate as
`X-SSL-Client-Cert` (URL-escaped PEM); the trust boundary (`iotconnector.middleware`) has
already dropped that header unless it came from a trusted proxy, so here it is believed. The
CN is the identity. A first contact is a job for the store, like any other state change.
"""

from __future__ import annotations

from urllib.parse import unquote

from django.utils import timezone

from connector import events
from connector.identity import identity_error
from connector.models import ClientCA, EventType, now_us
from devices.models import Device
from provisioning import auth, connectors, pki, rules, store
from provisioning.answers import NOT_FOUND, Answer, Pending, text
from provisioning.auth import DeviceRow
from provisioning.connectors import CachedConnector
from provisioning.explain import resolve
from provisioning.jobs import CertificateJob
from provisioning.refusals import certificate_refused


def authenticate_certificate(connector_id: str, ip: str, secure: bool, header: str):
    """The device presenting the certificate of this header (the proxy's URL-escaped PEM),
    or the answer refusing it."""
    if not secure:
        if connectors.load(connector_id, ip)[0] is None:
            return NOT_FOUND
        return text(403, "client certificates need TLS")
    return authenticate_chain(connector_id, ip, unquote(header))


def authenticate_chain(
    connector_id: str, ip: str, pem: str, protocol: str = "http"
) -> DeviceRow | Answer:
    """The device presenting this chain over TLS (its own certificate first), provisioned
    on first contact; or the answer refusing it. Every entry (the HTTPS proxy's header, the
    MQTT gateway's handshake) comes here."""
    entry, _failures = connectors.load(connector_id, ip)
    if entry is None:
        return NOT_FOUND
    # No failure limit before the check: a certificate cannot be guessed (rules.guessable),
    # and a refused one from an address over its limit is answered 429.
    now = timezone.now()
    try:
        certs = pki.load_certificates(pem)
        info = pki.check_client_certificate(certs[0], now)
    except pki.PKIError as exc:
        return certificate_refused(connector_id, "", ip, str(exc), public=str(exc))
    identity = info.common_name
    connector = entry.connector
    if reason := identity_error(identity, connector.identity_format):
        why = f"its CN {identity[:60]!r} is not a valid identity: {reason}"
        return certificate_refused(connector_id, identity, ip, why, public=why)
    if connector.pki_enabled:
        roots = [
            pki.load_certificates(ca.pem)[0]
            for ca in ClientCA.objects.filter(connector_id=connector_id)
        ]
        try:
            pki.verify_chain(certs[0], certs[1:], roots, now)
        except pki.PKIError as exc:
            return certificate_refused(connector_id, identity, ip, str(exc), public=str(exc))
    where = "d.identity = %s AND d.cert_fingerprint = %s"
    for device in auth.find(connector_id, ip, where, [identity, info.fingerprint]):
        if device.state in rules.CERTIFICATE_PROVISIONED:
            return _locked_or(device)
        break  # whitelisted with this very certificate (CSV import or auth.key): first contact
    job = first_contact(entry, identity, info, ip, protocol)
    if isinstance(job, Answer):
        return job
    answer = resolve(Pending(job, text(204)), store.run(job))
    if answer.status != 204:
        return answer
    device = auth.find(connector_id, ip, "d.identity = %s", [identity])[0]
    return _locked_or(device)


def _locked_or(device: DeviceRow) -> DeviceRow | Answer:
    return text(403, rules.LOCKED) if device.locked else device


def first_contact(
    entry: CachedConnector, identity: str, info: pki.CertInfo, ip: str, protocol: str = "http"
) -> CertificateJob | Answer:
    """The job that stores the certificate and provisions, or the refusal (SPEC.md §7)."""
    connector = entry.connector
    device = (
        Device.objects.filter(connector_id=connector.pk, identity=identity)
        .values("id", "cert_fingerprint", "cert_pem", "cert_not_after")
        .first()
    )
    if device is None:
        if reason := rules.certificate_registration_refusal(connector):
            return certificate_refused(connector.pk, identity, ip, reason)
        rotate = False
    else:
        stored = device["cert_fingerprint"]
        rotate = rules.may_rotate(
            connector.pki_enabled,
            stored,
            _not_before(device["cert_pem"]) if device["cert_not_after"] else None,
            info.not_before,
        )
        if stored and stored != info.fingerprint and not rotate:
            return certificate_refused(
                connector.pk, identity, ip, "the certificate is not the one stored"
            )
    if rotate:
        event = events.row(
            connector.pk,
            EventType.DEVICE_UPDATED,
            f"Certificate of {identity} rotated",
            identity=identity,
            source_ip=ip,
            payload={"fingerprint": info.fingerprint},
        )
    else:
        event = events.row(
            connector.pk,
            EventType.PROVISIONED,
            f"Provisioned {identity} (certificate)",
            identity=identity,
            source_ip=ip,
            payload={"auth_type": "certificate", "fingerprint": info.fingerprint},
        )
    return CertificateJob(
        connector_id=connector.pk,
        identity=identity,
        device_id=device["id"] if device else None,
        cert_pem=info.pem,
        cert_fingerprint=info.fingerprint,
        cert_not_after=info.not_after,
        provisioned_at=timezone.now(),
        now=now_us(),
        ip=ip,
        rotate=rotate,
        event=event,
        protocol=protocol,
    )


def _not_before(pem: str):
    try:
        return pki.load_certificates(pem)[0].not_valid_before_utc
    except pki.PKIError:
        return timezone.now()
