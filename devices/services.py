"""State changes of devices, one function each, shared by the Devices pages and the API.

Each validates its input first (raising `InvalidInput` with every problem by field) and then
writes the change and its event in one transaction.
"""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from connector import events, keys, outbox
from connector.models import Connector, Event, EventType, now_us
from connector.sql import insert_rows
from devices.models import AliasValue, Device, DeviceAuthType, DeviceTag, ExpiryMark, Status
from devices.resources import value_error
from devices.validation import check_device_certificate, check_expire, check_identity, check_tags
from provisioning import digicert, longpoll, pki

HOUR_US = 3_600_000_000
# Events list at most this many identities of a bulk action.
EVENT_IDENTITIES = 100


class InvalidInput(ValueError):
    """Bad input; `errors` maps a field (API: JSON path) to its message."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


class DeviceExists(Exception):
    pass


def whitelist_device(
    connector: Connector,
    identity: str,
    *,
    actor=None,
    expire: int | None = None,
    activation_hours: int | None = None,
    cert_pem: str = "",
    tags: list | None = None,
    locked: bool = False,
    source_ip: str | None = None,
) -> Device:
    """Whitelist one identity. The deadline is `expire` (µs), else now + `activation_hours`,
    else now + the connector's activation period."""
    errors: dict[str, str] = {}
    try:
        check_identity(identity, connector.identity_format)
    except ValueError as exc:
        errors["identity"] = str(exc)
    cert = None
    if cert_pem and cert_pem.strip() and "identity" not in errors:
        try:
            cert = check_device_certificate(cert_pem, identity)
        except ValueError as exc:
            errors["auth.key"] = str(exc)
    clean_tags: list[dict[str, str]] = []
    if tags is not None:
        try:
            clean_tags = check_tags(tags)
        except ValueError as exc:
            errors["tags"] = str(exc)
    if expire is not None:
        try:
            check_expire(expire)
        except ValueError as exc:
            errors["auth.expire"] = str(exc)
    if errors:
        raise InvalidInput(errors)
    if expire is None:
        hours = activation_hours or connector.activation_period_hours
        expire = now_us() + hours * HOUR_US
    with transaction.atomic():
        try:
            with transaction.atomic():
                device = Device.objects.create(
                    connector=connector,
                    identity=identity,
                    expire=expire,
                    locked=locked,
                    auth_type=DeviceAuthType.CERTIFICATE if cert else DeviceAuthType.NONE,
                    cert_pem=cert.pem if cert else "",
                    cert_fingerprint=cert.fingerprint if cert else "",
                    cert_not_after=cert.not_after if cert else None,
                )
        except IntegrityError as exc:
            raise DeviceExists(identity) from exc
        DeviceTag.objects.bulk_create(
            [DeviceTag(device=device, connector=connector, **tag) for tag in clean_tags]
        )
        events.record(
            connector,
            EventType.WHITELISTED,
            f"Whitelisted {identity}",
            identity=identity,
            actor=actor,
            source_ip=source_ip,
            payload={"count": 1, "expire": expire, "certificate": bool(cert)},
        )
    return device


def update_device(
    device: Device,
    *,
    actor=None,
    locked: bool | None = None,
    tags: list | None = None,
    expire: int | None = None,
) -> None:
    """Change lock, tags and/or deadline together, or nothing. `expire=0` revokes."""
    errors: dict[str, str] = {}
    clean_tags = None
    if tags is not None:
        try:
            clean_tags = check_tags(tags)
        except ValueError as exc:
            errors["tags"] = str(exc)
    if expire:
        try:
            check_expire(expire)
        except ValueError as exc:
            errors["auth.expire"] = str(exc)
    if errors:
        raise InvalidInput(errors)
    with transaction.atomic():
        if locked is not None:
            set_locked(device.connector, Device.objects.filter(pk=device.pk), locked, actor=actor)
            device.locked = locked
        if clean_tags is not None:
            DeviceTag.objects.filter(device=device).delete()
            DeviceTag.objects.bulk_create(
                [
                    DeviceTag(device=device, connector_id=device.connector_id, **t)
                    for t in clean_tags
                ]
            )
            events.record(
                device.connector_id,
                EventType.DEVICE_UPDATED,
                f"Tags of {device.identity} set",
                identity=device.identity,
                actor=actor,
                payload={"tags": clean_tags},
            )
        if expire == 0:
            revoke_device(device, actor=actor)
        elif expire is not None:
            Device.objects.filter(pk=device.pk).update(expire=expire)
            device.expire = expire
            events.record(
                device.connector_id,
                EventType.DEVICE_UPDATED,
                f"Activation deadline of {device.identity} changed",
                identity=device.identity,
                actor=actor,
                payload={"expire": expire},
            )


def revoke_device(device: Device, *, actor=None) -> None:
    """Drop the device's credential at once and let it provision again (Murano: expire = 0)."""
    with transaction.atomic():
        Device.objects.filter(pk=device.pk).update(
            state=Status.REPROVISION, secret_hash="", expire=None
        )
        device.state, device.secret_hash, device.expire = Status.REPROVISION, "", None
        longpoll.announce_connector(device.connector_id)  # its MQTT sessions end
        events.record(
            device.connector_id,
            EventType.REVOKED,
            f"Credential of {device.identity} revoked; it may provision again",
            identity=device.identity,
            actor=actor,
        )


def set_locked(connector: Connector, devices: QuerySet[Device], locked: bool, *, actor=None) -> int:
    """Lock or unlock the given devices of the connector; one event for the action."""
    with transaction.atomic():
        devices = devices.filter(connector=connector, locked=not locked)
        identities = list(devices.values_list("identity", flat=True)[:EVENT_IDENTITIES])
        count = devices.update(locked=locked)
        if count and locked:
            longpoll.announce_connector(connector.pk)  # their MQTT sessions end
        if count:
            verb = "Locked" if locked else "Unlocked"
            events.record(
                connector,
                EventType.LOCKED if locked else EventType.UNLOCKED,
                f"{verb} {_describe(identities, count)}",
                identity=identities[0] if count == 1 else "",
                actor=actor,
                payload={"count": count, "identities": identities},
            )
    return count


def delete_devices(connector: Connector, devices: QuerySet[Device], *, actor=None) -> int:
    """Delete the given devices of the connector (tags and activity go with them)."""
    with transaction.atomic():
        devices = devices.filter(connector=connector)
        count = devices.count()
        identities = list(devices.values_list("identity", flat=True)[:EVENT_IDENTITIES])
        if connector.pk in outbox.enabled([connector.pk]):
            now = now_us()
            outbox.add(
                [
                    outbox.row(connector.pk, "deleted", pk, identity, None, now)
                    for pk, identity in devices.values_list("pk", "identity").iterator()
                ],
                checked=True,
            )
        devices.delete()
        if count:
            longpoll.announce_connector(connector.pk)  # their MQTT sessions end
            events.record(
                connector,
                EventType.DELETED,
                f"Deleted {_describe(identities, count)}",
                identity=identities[0] if count == 1 else "",
                actor=actor,
                payload={"count": count, "identities": identities},
            )
    return count


def _describe(identities: list[str], count: int) -> str:
    if count == 1:
        return identities[0]
    return f"{count} devices"


def enable_with_csr(
    connector: Connector,
    identity: str,
    csr_pem: str,
    *,
    actor=None,
    expire: int | None = None,
    tags: list | None = None,
    locked: bool = False,
    source_ip: str | None = None,
) -> str:
    """Whitelist an identity with a certificate issued by the connector's signer for its CSR
    (Murano's auth.type "csr"). Returns the certificate (PEM); stored as the identity's key."""
    try:
        check_identity(identity, connector.identity_format)
    except ValueError as exc:
        raise InvalidInput({"identity": str(exc)}) from exc
    try:
        csr = pki.load_csr(csr_pem)
    except pki.PKIError as exc:
        raise InvalidInput({"auth.key": str(exc)}) from exc
    if pki.csr_common_name(csr) != identity:
        raise InvalidInput(
            {
                "auth.key": f"The CSR's CN is “{pki.csr_common_name(csr)}”, "
                f"not the identity “{identity}”."
            }
        )
    months = (connector.vendor_options or {}).get("validity_months") or 12
    if connector.vendor_name == "digicert":
        certificate = digicert.sign(
            csr_pem,
            identity,
            profile=connector.vendor_options.get("profile_name", ""),
            api_key=keys.decrypt(connector.vendor_api_key_encrypted),
            months=months,
        )
        issued = pki.cert_info(pki.load_certificates(certificate)[0])
        signer = "DigiCert"
    elif connector.vendor_name == "local" and connector.signer_ca_pem:
        ca_cert = pki.load_certificates(connector.signer_ca_pem)[0]
        ca_key = pki.load_private_key(keys.decrypt(connector.signer_key_encrypted))
        issued = pki.cert_info(pki.sign_csr(csr, ca_cert, ca_key, timezone.now(), months=months))
        signer = "the local CA"
    else:
        raise InvalidInput(
            {
                "auth.type": "This connector has no CSR signer: choose the local CA or "
                "DigiCert as validator vendor in its PKI settings."
            }
        )
    with transaction.atomic():
        whitelist_device(
            connector,
            identity,
            actor=actor,
            expire=expire,
            cert_pem=issued.pem,
            tags=tags,
            locked=locked,
            source_ip=source_ip,
        )
        events.record(
            connector,
            EventType.CERTIFICATE_ISSUED,
            f"Certificate issued for {identity} by {signer}",
            identity=identity,
            actor=actor,
            source_ip=source_ip,
            payload={"fingerprint": issued.fingerprint, "not_after": issued.not_after},
        )
    return issued.pem


def set_state(device: Device, values: dict, *, actor=None) -> None:
    """A cloud set: change `set` of settable aliases (checked against their definitions)."""
    resources = device.connector.resources or {}
    errors: dict[str, str] = {}
    clean: dict[str, str] = {}
    for alias, value in values.items():
        definition = resources.get(alias)
        if definition is None:
            errors[alias] = "No resource of this alias is defined."
        elif not definition.get("settable"):
            errors[alias] = "This resource is not settable."
        elif isinstance(value, dict | list) or value is None:
            errors[alias] = "Give a text, number or boolean value."
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if reason := value_error(definition, text):
                errors[alias] = reason[0].upper() + reason[1:] + "."
            clean[alias] = text
    if not values:
        errors["non_field_errors"] = "Give at least one alias and value."
    if errors:
        raise InvalidInput(errors)
    now = now_us()
    with transaction.atomic():
        insert_rows(
            AliasValue,
            ["device_id", "alias", "set", "timestamp"],
            [(device.pk, alias, value, now) for alias, value in clean.items()],
            conflict=["device_id", "alias"],
            update=["set", "timestamp"],
        )
        events.record(
            device.connector_id,
            EventType.DEVICE_UPDATED,
            "Set " + ", ".join(f"{a}={v}" for a, v in clean.items())[:250],
            identity=device.identity,
            actor=actor,
            payload={"set": clean},
        )
        payload = outbox.payload_json([(now, clean)])
        outbox.add(
            [
                outbox.row(
                    device.connector_id, "data_out", device.pk, device.identity, None, now, payload
                )
            ]
        )
        longpoll.announce(device.pk, list(clean))


EXPIRY_BATCH = 1000


def announce_expired(now: int | None = None) -> int:
    """The `expired` events of the devices whose activation window closed since the last
    look (whitelisted, unlocked, deadline passed): a Logs tab event and, for connectors with
    events delivered, an outbox row each, in the transaction that moves `ExpiryMark` past
    them, so each deadline is announced once whichever relay looks (the first look starts
    from now). Returns how many were announced; the relay calls it every EXPIRY_EVERY_S."""
    from provisioning.rows import WRITER_LOCK

    now = now_us() if now is None else now
    with WRITER_LOCK.held(), transaction.atomic():
        mark = ExpiryMark.objects.select_for_update().filter(pk=1).first()
        if mark is None:  # the first look: from now on (another relay may be making it too)
            try:
                with transaction.atomic():
                    ExpiryMark.objects.create(pk=1, until=now)
            except IntegrityError:
                pass
            return 0
        due = list(
            Device.objects.filter(
                state=Status.WHITELISTED, locked=False, expire__gt=mark.until, expire__lte=now
            )
            .order_by("expire")
            .values_list("id", "connector_id", "identity", "expire")[:EXPIRY_BATCH]
        )
        until = due[-1][3] if len(due) == EXPIRY_BATCH else now
        insert_rows(
            Event,
            events.COLUMNS,
            [
                events.row(
                    connector_id,
                    EventType.EXPIRED,
                    "Activation window closed without provisioning",
                    identity=identity,
                    payload={"expire": expire},
                )
                for _pk, connector_id, identity, expire in due
            ],
        )
        outbox.add(
            [
                outbox.row(connector_id, "expired", pk, identity, None, expire)
                for pk, connector_id, identity, expire in due
            ]
        )
        ExpiryMark.objects.filter(pk=1).update(until=until)
    return len(due)
