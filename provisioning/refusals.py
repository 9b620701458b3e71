"""Refused device requests: counted when they are guesses, logged with their reason, answered.
Every entry answers its refusals through these, so the Logs tab explains each the same way."""

from __future__ import annotations

from django.conf import settings

from connector import events
from connector.models import EventType
from provisioning import ratelimit, rules
from provisioning.answers import Answer, text, too_many
from provisioning.rules import Refusal
from provisioning.values import short


def activation_refused(connector_id: str, identity: str, ip: str, refusal: Refusal) -> Answer:
    """A refused activation: logged with its reason. A guessing-type failure is counted
    against the identity and, until that one identity is over its own limit
    (`rules.retries_own_identity`: one device retrying, answered 429 without a new log
    line), against the address too."""
    if refusal.counted:
        window = settings.DEVICE_AUTH_FAILURE_WINDOW
        if rules.retries_own_identity(ratelimit.note_guess(connector_id, identity, ip, window)):
            return too_many()
        ratelimit.note_failure(connector_id, ip)
    events.record(
        connector_id,
        refusal.event,
        f"Provision of {identity[:60]} refused: {refusal.reason}",
        identity=identity[:128],
        source_ip=ip,
        payload={"reason": refusal.reason, "status": refusal.status},
    )
    return text(refusal.status, refusal.reason)


def write_refused(
    connector_id: str, identity: str, pairs: list[tuple[str, str]], ip: str, reason: str
) -> Answer:
    """A write its definitions refuse (400): nothing stored, the reason logged, so the Logs
    tab can tell why a device's values did not arrive."""
    events.record(
        connector_id,
        EventType.DATA_REFUSED,
        f"Write refused: {reason}"[:300],
        identity=identity,
        source_ip=ip,
        payload={"reason": reason, "values": {a: short(v) for a, v in pairs[:50]}},
    )
    return text(400, reason)


# The 401 body when the reason would tell whether an identity exists.
CERTIFICATE_NOT_ACCEPTED = "the certificate is not accepted for this identity"


def certificate_refused(
    connector_id: str, identity: str, ip: str, reason: str, public: str = CERTIFICATE_NOT_ACCEPTED
) -> Answer:
    """A refused client certificate: counted, logged with its reason in plain words, and
    answered 401 with `public`, which tells nothing of whether the identity exists; 429
    once the address is over its failure limit."""
    if rules.over_failure_limit(ratelimit.note_failure(connector_id, ip) - 1):
        return too_many()
    events.record(
        connector_id,
        EventType.AUTH_FAILED,
        f"Certificate refused: {reason}",
        identity=identity[:128],
        source_ip=ip,
        payload={"reason": reason},
    )
    return text(401, public)
