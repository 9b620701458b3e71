"""The device store: every device write, record, activation and first certificate contact,
from every entry (the event loop, a Django thread, the MQTT gateway), is a job
(`provisioning.jobs`) executed here.

`execute(jobs)` runs jobs of one kind together in one transaction: a batch. The server
collects the jobs that arrive while a batch runs and sends them as the next one (group
commit, `iotconnector.front.Batcher`); a Django thread or a script sends a batch of one
(`run`). Either way a job is answered only after its own commit.

One implementation per database backend: PostgreSQL writes and claims are one statement per
batch (`provisioning.store_pg`), SQLite runs the same checks as a few statements in one
transaction (`provisioning.store_sqlite`). Records and certificates, rarer, are one
implementation for both (below).

A job the batch does not store comes back `UNSTORED`, and `provisioning.explain` finds out
why (a read-only step, not a second execution of the request).
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import lru_cache

from django.db import DatabaseError, connection, transaction

from connector import events, outbox
from connector.models import Event
from connector.sql import insert_rows, tables
from connector.sql import run as sql_run
from devices.models import AliasValue, DataPoint, Device, DeviceAuthType, DeviceSession, Status
from provisioning import longpoll, rules, store_pg, store_sqlite
from provisioning.answers import Answer
from provisioning.jobs import (
    STORED,
    UNSTORED,
    CertificateJob,
    Job,
    JobResult,
    Opened,
    RecordJob,
    SessionJob,
)
from provisioning.rows import WRITER_LOCK, touch
from provisioning.wire import encode_pairs

log = logging.getLogger(__name__)


def execute(jobs: list[Job]) -> list[JobResult]:
    """Execute jobs of one kind in one transaction; one result per job, in order. No two
    jobs may share a key. A batch that fails stores none (all UNSTORED) and leaves the
    connection usable."""
    if not jobs:
        return []
    kind = jobs[0].kind
    try:
        if kind in ("write", "claim"):
            backend = _backend()
            results = backend.write(jobs) if kind == "write" else backend.claim(jobs)
        elif kind == "session":
            with WRITER_LOCK.held(), transaction.atomic():
                results = _sessions(jobs)
        else:
            with WRITER_LOCK.held(), transaction.atomic():
                store = _record if kind == "record" else _certificate
                results = [store(job) for job in jobs]
    except DatabaseError:
        log.exception("a batch of %d %s jobs failed; each is explained on its own", len(jobs), kind)
        if connection.connection is not None and not connection.is_usable():
            connection.close()
        return [UNSTORED] * len(jobs)
    return results


def run(job: Job) -> JobResult:
    """A batch of one, on this thread's connection."""
    return execute([job])[0]


def _backend():
    return store_pg if connection.vendor == "postgresql" else store_sqlite


# --- Records (both backends) ------------------------------------------------------------------

POINT_COLUMNS = ["device_id", "alias", "timestamp", "value"]
POINTS_PER_STATEMENT = 1000


def _record(job: RecordJob) -> JobResult:
    """Store every point, or none when any collides with a stored one (409, naming them). The
    newest point of an alias becomes its latest value when it is newer than the stored one,
    so a read answers it whether it came from a write or a record (SPEC.md section 3)."""
    if collisions := _collisions(job):
        body = encode_pairs(
            (alias, ",".join(str(ts // 1_000_000) for ts in sorted(stamps)))
            for alias, stamps in collisions.items()
        )
        return Answer(409, body)
    rows = [(job.device_id, a, ts, v) for a, items in job.points.items() for ts, v in items]
    for start in range(0, len(rows), POINTS_PER_STATEMENT):
        insert_rows(DataPoint, POINT_COLUMNS, rows[start : start + POINTS_PER_STATEMENT])
    latest = []
    for alias, items in job.points.items():
        ts, value = max(items)
        latest.append((job.device_id, alias, value, value if alias in job.settable else None, ts))
    if latest:
        newer = sql_run(_latest_sql(len(latest)), [v for row in latest for v in row])
        longpoll.announce(job.device_id, [alias for (alias,) in newer])
    insert_rows(Event, events.COLUMNS, [job.event._replace(identity=job.identity)])
    outbox.add([_recorded(job)])
    touch(job.device_id, job.last_ip, job.last_seen, job.ip, job.now)
    return STORED


def _recorded(job: RecordJob) -> outbox.OutboxRow:
    """A record's `data_in`: one payload entry per timestamp, oldest first."""
    by_time: dict[int, dict[str, str]] = {}
    for alias, items in job.points.items():
        for ts, value in items:
            by_time.setdefault(ts, {})[alias] = value
    payload = outbox.payload_json(sorted(by_time.items()))
    return outbox.row(
        job.connector_id,
        "data_in",
        job.device_id,
        job.identity,
        job.ip,
        job.now,
        payload,
        job.protocol,
        job.connection_id,
    )


def _collisions(job: RecordJob) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for alias, items in job.points.items():
        stamps = [ts for ts, _value in items]
        for start in range(0, len(stamps), POINTS_PER_STATEMENT):
            chunk = stamps[start : start + POINTS_PER_STATEMENT]
            stored = DataPoint.objects.filter(
                device_id=job.device_id, alias=alias, timestamp__in=chunk
            )
            found.setdefault(alias, []).extend(stored.values_list("timestamp", flat=True))
    return {alias: stamps for alias, stamps in found.items() if stamps}


@lru_cache(maxsize=16)
def _latest_sql(nrows: int) -> str:
    """Upsert latest values, each only over an older one; RETURNING the aliases changed."""
    (table,) = tables(AliasValue)
    rows = ", ".join(["(%s, %s, %s, %s, %s)"] * nrows)
    return (
        f'INSERT INTO {table} (device_id, alias, reported, "set", timestamp) VALUES {rows}'  # noqa: S608
        f" ON CONFLICT (device_id, alias) DO UPDATE SET reported = excluded.reported,"
        f' "set" = COALESCE(excluded."set", {table}."set"), timestamp = excluded.timestamp'
        f" WHERE excluded.timestamp > {table}.timestamp RETURNING alias"
    )


# --- MQTT sessions (both backends) -----------------------------------------------------------

SESSION_COLUMNS = ["device_id", "connection", "node", "ip", "connected_at", "disconnected_at"]
# The wake-up "alias" that tells a device's other sessions a newer one connected.
SESSION_KEY = "$session:"


def _sessions(jobs: list[SessionJob]) -> list[JobResult]:
    """Open and end sessions in job order (a device's are in separate batches): for the
    batch, one read of the devices' last sessions and one of their set values, one upsert
    of the opened sessions, the events and the outbox rows."""
    opening = [job.device_id for job in jobs if job.opening]
    previous: dict[int, tuple[int | None, int | None]] = {}
    stored_sets: dict[int, list[tuple[str, str, int]]] = {}
    if opening:
        rows = (
            DeviceSession.objects.select_for_update()
            .filter(device_id__in=opening)
            .values_list("device_id", "connected_at", "disconnected_at")
        )
        previous = {device_id: (started, ended) for device_id, started, ended in rows}
        values = AliasValue.objects.filter(device_id__in=opening, set__isnull=False)
        for device_id, alias, value, timestamp in values.values_list(
            "device_id", "alias", "set", "timestamp"
        ):
            stored_sets.setdefault(device_id, []).append((alias, value, timestamp))
    results: list[JobResult] = []
    opened, logged, sent, announced = [], [], [], []
    for job in jobs:
        logged.append(job.event)
        sent.append(
            outbox.row(
                job.connector_id,
                "connect" if job.opening else "disconnect",
                job.device_id,
                job.event.identity,
                job.ip,
                job.now,
                protocol="mqtt",
                connection_id=job.connection,
            )
        )
        if not job.opening:
            sql_run(_end_session_sql(), [job.now, job.device_id, job.connection], fetch=False)
            results.append(STORED)
            continue
        opened.append((job.device_id, job.connection, job.node, job.ip, job.now, None))
        announced.append((job.device_id, SESSION_KEY + job.connection))
        since = _since(previous.get(job.device_id))
        settable = set(job.settable)
        downlink = sorted(
            (row for row in stored_sets.get(job.device_id, ()) if row[0] in settable),
            key=lambda row: row[2],
        )
        results.append(Opened(since, [row for row in downlink if row[2] > since]))
    # A device opened in this batch has one row: the upsert keeps `disconnected_at`.
    insert_rows(
        DeviceSession,
        SESSION_COLUMNS,
        opened,
        conflict=["device_id"],
        update=["connection", "node", "ip", "connected_at"],
    )
    insert_rows(Event, events.COLUMNS, logged)
    outbox.add(sent)
    longpoll.announce_keys(announced)
    return results


def _since(previous: tuple[int | None, int | None] | None) -> int:
    """When the device's last session ended; for a session whose process died without
    ending it, when it started; 0 for a first session."""
    if previous is None:
        return 0
    started, ended = previous
    if started and ended and ended < started:
        return started
    return ended or started or 0


@lru_cache(maxsize=1)
def _end_session_sql() -> str:
    """The session ends unless a newer one of the device took its row over."""
    (table,) = tables(DeviceSession)
    return (
        f"UPDATE {table} SET connected_at = NULL, disconnected_at = %s"  # noqa: S608
        " WHERE device_id = %s AND connection = %s"
    )


# --- Certificates' first contact (both backends) ----------------------------------------------


CERTIFICATE_FIELDS = (
    "state",
    "auth_type",
    "secret_hash",
    "cert_pem",
    "cert_fingerprint",
    "cert_not_after",
    "provisioned_at",
)


def _certificate(job: CertificateJob) -> JobResult:
    """Store the certificate and provision: register a new identity, or claim a claimable
    one (`rules.claimable`), or, rotating, replace a provisioned one's certificate."""
    fields = {  # in CERTIFICATE_FIELDS order
        "state": Status.PROVISIONED,
        "auth_type": DeviceAuthType.CERTIFICATE,
        "secret_hash": "",
        "cert_pem": job.cert_pem,
        "cert_fingerprint": job.cert_fingerprint,
        "cert_not_after": job.cert_not_after,
        "provisioned_at": job.provisioned_at,
    }
    if job.device_id is None:
        columns = ["connector_id", "identity", "locked", "expire", "created_at", *fields]
        values = [job.connector_id, job.identity, False, None, job.provisioned_at]
        values = [_adapt(v) for v in [*values, *fields.values()]]
        created = insert_rows(
            Device, columns, [values], conflict=["connector_id", "identity"], returning=["id"]
        )
        if not created:
            return UNSTORED  # registered by a concurrent first contact
        device_id = created[0][0]
    else:
        params = [_adapt(value) for value in fields.values()]
        if not sql_run(_certificate_sql(job.rotate), [*params, job.device_id, job.now]):
            return UNSTORED
        device_id = job.device_id
    insert_rows(Event, events.COLUMNS, [job.event])
    if not job.rotate:
        outbox.add(
            [
                outbox.row(
                    job.connector_id,
                    "provisioned",
                    device_id,
                    job.identity,
                    job.ip,
                    job.now,
                    protocol=job.protocol,
                )
            ]
        )
    return STORED


def _adapt(value):
    return connection.ops.adapt_datetimefield_value(value) if isinstance(value, datetime) else value


@lru_cache(maxsize=2)
def _certificate_sql(rotate: bool) -> str:
    """Claim (or, rotating, replace the certificate of) one device: an UPDATE whose WHERE is
    `rules.sql_claimable`, widened for a rotation to a provisioned device that is not locked."""
    qn = connection.ops.quote_name
    sets = ", ".join(f"{qn(name)} = %s" for name in CERTIFICATE_FIELDS)
    where = rules.sql_claimable(state="state", locked="locked", expire="expire", now="%s")
    if rotate:
        states = ", ".join(f"'{state.value}'" for state in rules.CERTIFICATE_PROVISIONED)
        where = f"({where} OR (NOT locked AND state IN ({states})))"
    return f"UPDATE {tables(Device)[0]} SET {sets} WHERE id = %s AND {where} RETURNING id"  # noqa: S608
