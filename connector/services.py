"""State changes of accounts and connectors: one function each, shared by the UI and the API."""

from __future__ import annotations

from django.contrib.auth.hashers import make_password
from django.db import IntegrityError, transaction
from django.utils import timezone

from connector import events, keys
from connector.models import (
    ClientCA,
    Connector,
    EventType,
    Membership,
    User,
    Vendor,
)
from provisioning import longpoll, pki

# Settings columns copied from a validated SettingsForm onto the connector.
SETTINGS_COLUMNS = (
    "devmode",
    "protocol_name",
    "auth_type",
    "provisioning_enabled",
    "presenter_identity",
    "ip_whitelisting_enabled",
    "ip_allowed",
    "activation_period_hours",
    "id_prefix",
    "id_type",
    "id_length",
    "id_casing",
    "pki_enabled",
    "vendor_name",
)


def sign_up(email: str, password: str) -> User | None:
    """Create the account unless the address has one already; either way the same work is
    done (a password hash), so neither the answer nor its timing tells which it was."""
    if User.objects.filter(email=email).exists():
        make_password(password)
        return None
    try:
        with transaction.atomic():
            return User.objects.create_user(email, password)
    except IntegrityError:  # created in between by a concurrent sign-up
        return None


def create_connector(user: User, name: str) -> Connector:
    """Create a connector owned by `user`, with a fresh random id."""
    for _attempt in range(5):
        try:
            with transaction.atomic():
                connector = Connector.objects.create(name=name)
                Membership.objects.create(
                    user=user, connector=connector, role=Membership.Role.OWNER
                )
                events.record(
                    connector,
                    EventType.CONNECTOR_CREATED,
                    f"Connector “{name}” created",
                    actor=user,
                )
                return connector
        except IntegrityError:  # id collision (87 bits: practically never); draw again
            continue
    raise RuntimeError("Could not allocate a connector id.")


def rename_connector(connector: Connector, user: User, name: str) -> None:
    old = connector.name
    if old == name:
        return
    with transaction.atomic():
        Connector.objects.filter(pk=connector.pk).update(name=name)
        connector.name = name
        events.record(
            connector,
            EventType.CONNECTOR_RENAMED,
            f"Renamed from “{old}” to “{name}”",
            actor=user,
            payload={"from": old, "to": name},
        )


def delete_connector(connector: Connector, user: User) -> None:
    """Delete the connector with its devices, CAs, events and content (cascade; the
    content's files once that commits)."""
    from connector import content

    with transaction.atomic():
        pk = connector.pk
        content.forget_connector(pk)
        connector.delete()
        longpoll.announce_connector(pk)  # its MQTT sessions end


def update_settings(connector: Connector, user: User, cleaned: dict) -> list[str]:
    """Apply a validated SettingsForm's data; record what changed. Returns changed field names."""
    new_values = dict(cleaned)
    new_values["id_length"] = cleaned.get("id_length") or None
    new_values["vendor_name"] = cleaned.get("vendor_name") or Vendor.NONE
    options = {}
    if new_values["vendor_name"] == Vendor.DIGICERT:
        options = {
            "profile_name": cleaned.get("digicert_profile", ""),
            "validity_months": cleaned.get("digicert_validity_months"),
        }
    changed: list[str] = []
    with transaction.atomic():
        locked = Connector.objects.select_for_update().get(pk=connector.pk)
        payload: dict[str, dict] = {}
        for column in SETTINGS_COLUMNS:
            old, new = getattr(locked, column), new_values[column]
            if old != new:
                payload[column] = {"from": old, "to": new}
                setattr(locked, column, new)
        if (locked.vendor_options or {}) != options:
            payload["vendor_options"] = {"from": locked.vendor_options, "to": options}
            locked.vendor_options = options
        if cleaned.get("digicert_api_key"):
            # Never logged: the event says only that it changed.
            locked.vendor_api_key_encrypted = keys.encrypt(cleaned["digicert_api_key"])
            payload["vendor_api_key"] = {"changed": True}
        elif new_values["vendor_name"] != Vendor.DIGICERT and locked.vendor_api_key_encrypted:
            locked.vendor_api_key_encrypted = ""
            payload["vendor_api_key"] = {"removed": True}
        removed = list(cleaned.get("client_ca_remove") or [])
        if removed:
            ClientCA.objects.filter(connector=locked, fingerprint__in=removed).delete()
            payload["client_ca_removed"] = removed
        added = cleaned.get("client_ca_add") or []
        for info in added:
            ClientCA.objects.create(
                connector=locked,
                pem=info.pem,
                fingerprint=info.fingerprint,
                subject=info.subject[:500],
                not_after=info.not_after,
            )
        if added:
            payload["client_ca_added"] = [
                {"subject": i.subject, "fingerprint": i.fingerprint} for i in added
            ]
        resources = cleaned.get("resources")
        if resources is not None and resources != (locked.resources or {}):
            payload["resources"] = {"aliases": sorted(resources)}
            locked.resources = resources
            locked.resources_version += 1
        if cleaned.get("local_ca"):
            payload["local_ca"] = _install_local_ca(locked, *cleaned["local_ca"])
        elif new_values["vendor_name"] == Vendor.LOCAL and not locked.signer_ca_pem:
            payload["local_ca"] = _generate_local_ca(locked)
        if payload:
            locked.save()
            longpoll.announce_connector(locked.pk)  # MQTT sessions checked against these
            changed = sorted(payload)
            events.record(
                locked,
                EventType.SETTINGS_CHANGED,
                "Settings changed: " + ", ".join(changed),
                actor=user,
                payload=payload,
            )
    connector.refresh_from_db()
    return changed


def _install_local_ca(connector: Connector, info, key_pem: str) -> dict:
    """An uploaded CA (certificate + key) becomes the local signer and a client CA."""
    connector.signer_ca_pem = info.pem
    connector.signer_key_encrypted = keys.encrypt(key_pem)
    if not ClientCA.objects.filter(connector=connector, fingerprint=info.fingerprint).exists():
        ClientCA.objects.create(
            connector=connector,
            pem=info.pem,
            fingerprint=info.fingerprint,
            subject=info.subject[:500],
            not_after=info.not_after,
        )
    return {"uploaded": info.subject, "fingerprint": info.fingerprint}


def _generate_local_ca(connector: Connector) -> dict:
    """The connector's own CA for signing CSRs; also trusted as one of its client CAs."""
    cert, key = pki.new_ca(f"{connector.name} device CA ({connector.id})"[:64], timezone.now())
    info = pki.cert_info(cert)
    connector.signer_ca_pem = info.pem
    connector.signer_key_encrypted = keys.encrypt(pki.private_key_pem(key))
    ClientCA.objects.create(
        connector=connector,
        pem=info.pem,
        fingerprint=info.fingerprint,
        subject=info.subject[:500],
        not_after=info.not_after,
    )
    return {"generated": info.subject, "fingerprint": info.fingerprint}


def set_resource(connector: Connector, user: User, alias: str, definition: dict | None) -> None:
    """Add, change (a checked definition) or remove (None) one resource of the connector."""
    with transaction.atomic():
        locked = Connector.objects.select_for_update().get(pk=connector.pk)
        resources = dict(locked.resources or {})
        if definition is None:
            if resources.pop(alias, None) is None:
                return
            summary = f"Resource {alias} removed"
        else:
            summary = f"Resource {alias} {'changed' if alias in resources else 'defined'}"
            resources[alias] = definition
        Connector.objects.filter(pk=locked.pk).update(
            resources=resources, resources_version=locked.resources_version + 1
        )
        events.record(
            locked,
            EventType.SETTINGS_CHANGED,
            summary,
            actor=user,
            payload={"resource": alias, "definition": definition},
        )
    connector.refresh_from_db()
