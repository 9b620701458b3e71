"""The state changes of the device API as jobs for the store (`provisioning.store`).

A job is made by a service function (`provisioning.services`, `provisioning.certauth`) once
every check that needs no database has passed; the store executes it, alone or with others
of its kind, and every check that needs the database happens in the statement that acts.
Jobs carry named fields only; `key` keeps two jobs on one row out of one batch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, NamedTuple

from connector.events import EventRow
from provisioning.answers import Answer

# The most jobs one batch carries; more wait for the next.
MAX_BATCH = 1024


class ValueRow(NamedTuple):
    """One alias of a write: what the device reported, and the `set` value it also becomes
    when the resource is settable. (A named tuple: made per alias on the hot path.)"""

    alias: str
    reported: str
    set: str | None


@dataclass(slots=True, eq=False)
class WriteJob:
    """A device write. The device is found by its token's hashes (a write checked with no
    query) or is one already authenticated (`device_id`)."""

    connector_id: str
    rows: list[ValueRow]
    pairs: list[tuple[str, str]]  # as sent: re-checked when the definitions changed
    now: int  # µs: the values' timestamp and the event's time
    ip: str
    secure: bool  # rules.tls_or_insecure
    resources_version: int  # of the definitions the values were checked against
    event: EventRow  # its identity is filled in by the statement
    hashes: tuple[str, ...] = ()  # the token's hash under every configured pepper
    device_id: int | None = None
    protocol: str = "http"  # the entry it came through: "http" or "mqtt" (events)
    connection_id: str = ""  # the MQTT session's (device events)

    max_batch: ClassVar[int] = MAX_BATCH
    kind: ClassVar[str] = "write"
    # A device's writes may share a batch (a device pipelining PUBLISHes): the store
    # keeps the last one's values and logs each.
    shares_batch: ClassVar[bool] = True

    @property
    def key(self) -> object:
        """Writes of one device never go in two batches in flight at once."""
        return self.hashes[0] if self.hashes else self.device_id


@dataclass(slots=True, eq=False)
class ClaimJob:
    """An activation's one-time step: claim the identity if it is still claimable
    (`rules.claimable`), or create it when the connector lets devices register themselves;
    only while the connector's activation settings have `fingerprint`."""

    connector_id: str
    identity: str
    state: str
    auth_type: str
    secret_hash: str
    provisioned_at: datetime
    now: int  # µs
    ip: str
    secure: bool  # over TLS (else provisioned in developer mode)
    event: EventRow
    fingerprint: str  # of the connector settings it was checked against
    register: bool  # rules.may_register, under those settings
    password: str | None = field(default=None, repr=False)  # re-checked if settings changed
    protocol: str = "http"

    max_batch: ClassVar[int] = MAX_BATCH
    kind: ClassVar[str] = "claim"

    @property
    def key(self) -> tuple[str, str]:
        """Activations of one identity go in separate batches: exactly one can claim it."""
        return self.connector_id, self.identity


@dataclass(slots=True, eq=False)
class RecordJob:
    """Historical points of an authenticated device (`POST /onep:v1/stack/record`): all
    stored, or none when any collides with a stored point."""

    connector_id: str
    device_id: int
    identity: str
    points: dict[str, list[tuple[int, str]]]  # alias -> [(µs, value)], defined aliases only
    settable: frozenset[str]  # of those aliases
    now: int
    ip: str
    last_ip: str | None
    last_seen: int | None
    event: EventRow
    protocol: str = "http"
    connection_id: str = ""  # the MQTT session's (device events)

    max_batch: ClassVar[int] = MAX_BATCH
    kind: ClassVar[str] = "record"

    @property
    def key(self) -> int:
        return self.device_id


@dataclass(slots=True, eq=False)
class SessionJob:
    """An authenticated device's MQTT session opening (its row, its `connect` event, the
    device's other sessions told to close, and the set values stored since its last session
    ended, which the result carries) or ending (`disconnect`)."""

    connector_id: str
    device_id: int
    connection: str  # the session's id
    node: str  # the server process holding it
    ip: str
    now: int  # µs
    opening: bool
    event: EventRow
    settable: tuple[str, ...] = ()  # opening: the aliases whose set values go down

    max_batch: ClassVar[int] = MAX_BATCH
    kind: ClassVar[str] = "session"

    @property
    def key(self) -> int:
        """A device's opens and ends go in separate batches, in the order they came."""
        return self.device_id


class Opened(NamedTuple):
    """A stored session opening: `since` (µs) is when the device's last session ended (set
    values stored after it are news to the device), `downlink` those values, oldest first."""

    since: int
    downlink: list[tuple[str, str, int]]  # (alias, value, µs)


@dataclass(slots=True, eq=False)
class CertificateJob:
    """A certificate's first contact (SPEC.md section 7): store it and provision the identity,
    registering it when there is no row (`device_id` None), or rotating a stored certificate
    for a newer one from the connector's CA (`rotate`)."""

    connector_id: str
    identity: str
    device_id: int | None
    cert_pem: str
    cert_fingerprint: str
    cert_not_after: datetime
    provisioned_at: datetime
    now: int
    ip: str
    rotate: bool
    event: EventRow
    protocol: str = "http"

    max_batch: ClassVar[int] = 1
    kind: ClassVar[str] = "certificate"

    @property
    def key(self) -> tuple[str, str]:
        return self.connector_id, self.identity


Job = WriteJob | ClaimJob | RecordJob | CertificateJob | SessionJob


class Outcome(enum.Enum):
    """What the store made of a job."""

    STORED = "stored"  # committed: the pending answer holds
    UNSTORED = "unstored"  # not stored: `provisioning.explain` finds out why


STORED, UNSTORED = Outcome.STORED, Outcome.UNSTORED
# An Answer: not stored, and this is why (a record's collisions).
JobResult = Outcome | Answer | Opened
