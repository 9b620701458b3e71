"""The device API's rules, in one place: who may claim an identity, what a device request is
refused for, when last seen is due, which transport is allowed.

Pure predicates: no database, no request. Every entry (the event loop, a Django thread, the
MQTT gateway) and every store backend asks these. Where PostgreSQL's one-statement batch must
apply a rule inside SQL, its encoding is the `sql_*` function beside the predicate, and
`tests/test_rules.py` runs every case through both, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from django.conf import settings

from connector.identity import identity_error
from connector.models import AuthType, Connector, EventType
from devices.models import Status
from provisioning import ratelimit

# Last IP / last seen are rewritten at most this often per device (µs), not on every request.
ACTIVITY_EVERY_US = 60 * 1_000_000
MIN_PASSWORD_BYTES = 20

PLAIN_HTTP = "plain HTTP is refused: use HTTPS"
TOO_MANY = "too many failed attempts"
LOCKED = "device is locked"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused: its status, a one-line reason a person can read (it tells
    nothing of whether an identity exists unless the caller proved it may know), whether it
    counts as a guess towards the failure limit, and the event type that logs it."""

    status: int
    reason: str
    counted: bool = False
    event: str = EventType.PROVISION_FAILED


# --- Transport and failures -------------------------------------------------------------------


def transport_allowed(secure: bool, devmode: bool) -> bool:
    """TLS, or plain HTTP allowed by the connector's developer mode or the server's insecure
    development setting."""
    return secure or devmode or settings.DEVICE_API_INSECURE


def tls_or_insecure(secure: bool) -> bool:
    """What a job carries for `transport_allowed` when the connector's developer mode is
    read by the statement itself."""
    return secure or settings.DEVICE_API_INSECURE


def over_failure_limit(failures: int | None) -> bool:
    return (failures or 0) >= settings.DEVICE_AUTH_FAILURE_LIMIT


def sql_under_failure_limit(failures: str) -> str:
    """SQL for `not over_failure_limit(failures)`; the limit is the next parameter."""
    return f"COALESCE({failures}, 0) < %s"


# --- Device requests --------------------------------------------------------------------------


def device_refusal(*, secure: bool, devmode: bool, locked: bool) -> Refusal | None:
    """Why an authenticated device's request is refused, or None: plain HTTP, then a locked
    device. The failures of other clients at its address never refuse it: a token (238
    random bits) or a certificate cannot be guessed, and a password is judged by its own
    identity's failures before it is checked (`password_refused`)."""
    if not transport_allowed(secure, devmode):
        return Refusal(403, PLAIN_HTTP)
    if locked:
        return Refusal(403, LOCKED)
    return None


def sql_device_allowed(*, locked: str, devmode: str, secure: str) -> str:
    """SQL for `device_refusal(...) is None`, where `secure` is `tls_or_insecure(...)`."""
    return f"(NOT {locked} AND ({devmode} OR {secure}))"


def password_refused(counts: ratelimit.Guesses, *, known: bool) -> bool:
    """Whether a device password is refused unchecked: its identity had
    DEVICE_IDENTITY_FAILURE_LIMIT failures from this address in the window, or
    DEVICE_IDENTITY_FAILURE_LIMIT_ALL from everywhere and this is not the address the device
    was last seen at (`known`)."""
    return ratelimit.guess_refused(
        counts,
        known=known,
        here_limit=settings.DEVICE_IDENTITY_FAILURE_LIMIT,
        everywhere_limit=settings.DEVICE_IDENTITY_FAILURE_LIMIT_ALL,
    )


def retries_own_identity(failures_here: int) -> bool:
    """Whether a refused activation or password is one device retrying its own identity
    beyond DEVICE_IDENTITY_FAILURE_LIMIT: answered 429 and no longer counted against its
    address, so one misbehaving device costs the neighbours behind its NAT nothing."""
    return failures_here > settings.DEVICE_IDENTITY_FAILURE_LIMIT


def activity_due(last_ip: str | None, last_seen: int | None, ip: str, now: int) -> bool:
    """Whether last IP / last seen must be rewritten: the address changed, or a minute went by."""
    return last_ip != ip or last_seen is None or now - last_seen >= ACTIVITY_EVERY_US


def sql_activity_due(*, last_ip: str, last_seen: str, ip: str, now: str) -> str:
    """SQL for `activity_due`; `ACTIVITY_EVERY_US` is the next parameter."""
    return (
        f"({last_ip} IS NULL OR {last_ip} <> {ip} OR {last_seen} IS NULL"
        f" OR {now} - {last_seen} >= %s)"
    )


# --- Activation -------------------------------------------------------------------------------


def claimable(state: str, locked: bool, expire: int | None, now: int) -> bool:
    """Whether an activation may claim this identity now: flagged for reprovision, or
    whitelisted and within its activation window; never while locked."""
    if locked:
        return False
    if state == Status.REPROVISION:
        return True
    return state == Status.WHITELISTED and (expire is None or expire >= now)


def sql_claimable(*, state: str, locked: str, expire: str, now: str) -> str:
    """SQL for `claimable` (the states are this module's constants, not parameters)."""
    window = f"({expire} IS NULL OR {expire} >= {now})"
    return (
        f"(NOT {locked} AND ({state} = '{Status.REPROVISION.value}'"
        f" OR ({state} = '{Status.WHITELISTED.value}' AND {window})))"
    )


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


def activation_refusal(
    connector: Connector, identity: str, password: str | None, ip: str
) -> Refusal | None:
    """Why the connector's settings refuse this activation, or None. Reads nothing: the
    statement that claims confirms the settings are still these (their fingerprint)."""
    if connector.auth_type == AuthType.CERTIFICATE:
        return Refusal(415, "this connector uses TLS client certificates")
    if not connector.provisioning_enabled:
        return Refusal(403, "provisioning is disabled")
    if not ip_allowed(connector, ip):
        return Refusal(403, f"address {ip} is not allowed to provision")
    if reason := identity_error(identity, connector.identity_format):
        return Refusal(404, reason, counted=True)
    if connector.auth_type == AuthType.PASSWORD:
        if password is None:
            return Refusal(415, "this connector expects a password")
        if len(password.encode()) < MIN_PASSWORD_BYTES:
            return Refusal(415, f"the password is shorter than {MIN_PASSWORD_BYTES} bytes")
    elif password is not None:
        return Refusal(415, "this connector provisions tokens, not passwords")
    return None


def may_register(connector: Connector) -> bool:
    """Self-registration: an identity not whitelisted may provision (it is created)."""
    return connector.presenter_identity


def unclaimed_refusal(
    state: str | None, locked: bool, expire: int | None, now: int, *, register: bool
) -> Refusal | None:
    """Why an identity that passed `activation_refusal` was not claimed, from its row as it
    is now (`state` None: there is no row); None when it could be claimed now."""
    if state is None:
        if register:
            return None
        return Refusal(404, "identity is not whitelisted", counted=True)
    if locked:
        return Refusal(403, LOCKED)
    if claimable(state, locked, expire, now):
        return None
    if state == Status.WHITELISTED:
        return Refusal(409, "activation window expired", counted=True, event=EventType.EXPIRED)
    return Refusal(409, "identity already provisioned", counted=True)


# --- Client certificates (SPEC.md section 7) --------------------------------------------------

# The states in which a device's stored certificate authenticates it.
CERTIFICATE_PROVISIONED = (Status.PROVISIONED, Status.DEVMODE)


def certificate_registration_refusal(connector: Connector) -> str | None:
    """Why a certificate whose CN names no identity may not create it, or None: with PKI on
    (the connector's CA vouches for it) or self-registration on, it may."""
    if not connector.provisioning_enabled:
        return "provisioning is disabled"
    if not (connector.presenter_identity or connector.pki_enabled):
        return "identity is not whitelisted"
    return None


def may_rotate(pki_enabled: bool, stored_fingerprint: str, stored_not_before, not_before) -> bool:
    """With PKI on, a newer certificate from the connector's CA replaces the stored one."""
    return bool(
        pki_enabled
        and stored_fingerprint
        and stored_not_before is not None
        and not_before > stored_not_before
    )
