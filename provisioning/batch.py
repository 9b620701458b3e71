"""Group commit of device writes and activations: many requests, one transaction, one
commit (on PostgreSQL, one statement).

A device write's own work in the database is small (find the device by its token, upsert a
value, append an event); what it costs is the round trip around it: the statement's start,
its commit, and on the server side a thread that blocks on the socket and the wake-ups that
follow. So the server (`iotconnector.front`) collects the writes that arrive while a statement
is running and sends them together as the next one: under load a statement carries many
writes, and when the service is quiet it carries one and nothing waits.

Each write is still all-or-nothing and acknowledged only after its commit. A write the
statement does not store (unknown token, locked device, plain HTTP, too many failures,
definitions changed since the values were checked) is answered by the ordinary path, which
authenticates again and gives the refusal; so is every write of a batch that failed.
Activations work the same way (`ClaimJob`): an identity not claimed is explained by the
ordinary path, which reads the connector afresh.

On SQLite the same checks run as a few statements in one transaction. There the batch has a
second purpose: SQLite has one writer at a time, and threads that each open a write
transaction wait for its lock in SQLite's busy handler, which sleeps (1, 2, 5 … 100 ms);
one batch thread that writes for all of them never waits.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import ClassVar

from django.conf import settings
from django.db import DatabaseError, connection, transaction

from connector import events
from connector.models import Connector, Event, EventType
from connector.sql import insert_rows, tables
from connector.sql import run as sql_run
from devices.models import AliasValue, Device, DeviceActivity, DeviceAuthType, Status
from provisioning import auth, longpoll, ratelimit
from provisioning.models import AuthFailure

log = logging.getLogger(__name__)

# Last IP / last seen are rewritten at most this often per device (µs), not on every request.
ACTIVITY_EVERY_US = 60 * 1_000_000
# The most writes one statement carries; more wait for the next.
MAX_BATCH = 64


@dataclass(slots=True, eq=False)
class WriteJob:
    """One device's token-authenticated write, checked and ready to store."""

    connector_id: str
    hashes: list[str]  # the token's hash under every configured pepper
    rows: list[tuple[str, str, str | None]]  # (alias, reported, set)
    now: int  # µs: the values' timestamp and the event's time
    ip: str
    secure: bool  # TLS, or plain HTTP allowed by the insecure development setting
    resources_version: int  # the definitions the values were checked against
    summary: str  # the event's
    payload: str  # the event's, JSON

    max_batch: ClassVar[int] = MAX_BATCH

    @property
    def key(self) -> str:
        """Writes of one device go in separate statements (an upsert touches a row once)."""
        return self.hashes[0]

    @staticmethod
    def execute(jobs: list[WriteJob]) -> list[bool]:
        return write_jobs(jobs)


VALUE_COLUMNS = ["device_id", "alias", "reported", "set", "timestamp"]
UPSERT = {
    "conflict": ["device_id", "alias"],
    "update": ["reported", "timestamp"],
    "keep_if_null": ["set"],
}
ACTIVITY_COLUMNS = ["device_id", "last_ip", "last_seen"]
ACTIVITY_UPSERT = {"conflict": ["device_id"], "update": ["last_ip", "last_seen"]}


def write_jobs(jobs: list[WriteJob]) -> list[bool]:
    """Store the writes in one transaction; whether each was stored. No two jobs may share
    a key. A failing batch stores none (False for all) and leaves the connection usable."""
    if connection.vendor != "postgresql":
        return _in_transaction(_store_writes, jobs, "device writes")
    # Three parameters of JSON whatever the batch size: json.dumps is C, where adapting
    # arrays element by element cost more than the rest of the batch.
    params = [
        json.dumps(
            [
                [n, j.connector_id, j.now, j.ip, j.secure, j.resources_version]
                + [j.summary, j.payload]
                for n, j in enumerate(jobs)
            ]
        ),
        json.dumps([[n, h] for n, j in enumerate(jobs) for h in j.hashes]),
        json.dumps([[n, *row] for n, j in enumerate(jobs) for row in j.rows]),
        DeviceAuthType.TOKEN,
        ratelimit.current_window(),
        settings.DEVICE_AUTH_FAILURE_LIMIT,
        ACTIVITY_EVERY_US,
        str(EventType.DATA_IN),
    ]
    return _run(_write_sql(), params, jobs, "device writes")


def _json_rows(name: str, columns: list[str]) -> str:
    """A CTE of the rows of a JSON array of arrays passed as a parameter: element 0 is the
    job number `n`, then `columns` in order, each optionally cast (`"now::bigint"`)."""
    fields = ["j->>0 AS n"]
    for index, column in enumerate(columns, start=1):
        column, _, cast = column.partition("::")
        fields.append(f"(j->>{index})::{cast} AS {column}" if cast else f"j->>{index} AS {column}")
    select = ", ".join(fields)  # names from this module only; values are parameters
    return f"{name} AS (SELECT {select} FROM json_array_elements(%s::json) AS j)"  # noqa: S608


def _event_columns() -> str:
    return ", ".join(connection.ops.quote_name(c) for c in events.COLUMNS)


@lru_cache(maxsize=1)
def _write_sql() -> str:
    """One statement, the same text for any number of writes: the jobs, their token hashes
    and their values come as three JSON arrays of arrays, joined by job number `n`.
    LATERAL … LIMIT 1 keeps the token lookup an index probe per job even in the generic
    plan of the prepared statement."""
    device, conn, activity, failure, value, event = tables(
        Device, Connector, DeviceActivity, AuthFailure, AliasValue, Event
    )
    job = ["connector_id", "now::bigint", "ip::inet", "secure::bool", "version::int"]
    return (
        f"WITH {_json_rows('job', [*job, 'summary', 'payload'])}, "  # noqa: S608
        f"{_json_rows('candidate', ['hash'])}, "
        f"{_json_rows('val', ['alias', 'reported', 'set_value'])}, "
        "dev AS (SELECT DISTINCT ON (job.n) job.*, d.id, d.identity, d.locked, c.devmode,"
        " c.resources_version, a.last_ip, a.last_seen, f.count AS failures"
        " FROM job JOIN candidate ON candidate.n = job.n"
        f" CROSS JOIN LATERAL (SELECT * FROM {device} d WHERE d.connector_id = job.connector_id"
        " AND d.auth_type = %s AND NOT (d.secret_hash = '') AND d.secret_hash = candidate.hash"
        " LIMIT 1) d"
        f" JOIN {conn} c ON c.id = d.connector_id"
        f" LEFT JOIN {activity} a ON a.device_id = d.id"
        f" LEFT JOIN {failure} f ON f.connector_id = d.connector_id AND f.ip = job.ip"
        " AND f.window_start = %s ORDER BY job.n), "
        "ok AS (SELECT * FROM dev WHERE NOT dev.locked AND (dev.devmode OR dev.secure)"
        " AND COALESCE(dev.failures, 0) < %s AND dev.resources_version = dev.version), "
        f'stored AS (INSERT INTO {value} (device_id, alias, reported, "set", timestamp)'
        " SELECT ok.id, val.alias, val.reported, val.set_value, ok.now FROM ok"
        " JOIN val ON val.n = ok.n"
        " ON CONFLICT (device_id, alias) DO UPDATE SET reported = excluded.reported,"
        f' "set" = COALESCE(excluded."set", {value}."set"), timestamp = excluded.timestamp'
        " RETURNING device_id, alias), "
        f"notified AS ({longpoll.NOTIFY_STORED}), "
        f"seen AS (INSERT INTO {activity} (device_id, last_ip, last_seen)"
        " SELECT ok.id, ok.ip, ok.now FROM ok WHERE ok.last_ip IS DISTINCT FROM ok.ip"
        " OR ok.last_seen IS NULL OR ok.now - ok.last_seen >= %s"
        " ON CONFLICT (device_id) DO UPDATE SET last_ip = excluded.last_ip,"
        " last_seen = excluded.last_seen), "
        f"logged AS (INSERT INTO {event} ({_event_columns()})"
        " SELECT ok.connector_id, ok.now, %s, ok.identity, ok.ip, NULL, '', ok.summary,"
        " ok.payload::jsonb FROM ok) "
        "SELECT ok.n FROM ok, (SELECT count(*) FROM notified) AS notes"
    )


@dataclass(slots=True, eq=False)
class ClaimJob:
    """One activation's one-time step, checked and ready: the identity is claimed only if it
    is still whitelisted (within its window) or flagged for reprovision, and not locked."""

    connector_id: str
    identity: str
    state: str
    auth_type: str
    secret_hash: str
    provisioned_at: datetime
    now: int  # µs
    ip: str
    summary: str  # the event's
    payload: str  # the event's, JSON
    fingerprint: str  # of the connector settings it was checked against ("": just read)

    max_batch: ClassVar[int] = MAX_BATCH

    @property
    def key(self) -> tuple[str, str]:
        """Activations of one identity go in separate statements: exactly one can claim it."""
        return self.connector_id, self.identity

    @staticmethod
    def execute(jobs: list[ClaimJob]) -> list[bool]:
        return claim_jobs(jobs)


def claim_jobs(jobs: list[ClaimJob]) -> list[bool]:
    """Claim the identities in one transaction (with last-seen rows and events); whether
    each was claimed. No two jobs may share a key. A failing batch claims none."""
    if connection.vendor != "postgresql":
        return _in_transaction(_store_claims, jobs, "activations")
    params = [
        json.dumps(
            [
                [n, j.connector_id, j.identity, j.state, j.auth_type, j.secret_hash]
                + [j.provisioned_at.isoformat(), j.now, j.ip, j.summary, j.payload]
                + [j.fingerprint]
                for n, j in enumerate(jobs)
            ]
        ),
        ratelimit.current_window(),
        settings.DEVICE_AUTH_FAILURE_LIMIT,
        False,
        Status.REPROVISION,
        Status.WHITELISTED,
        str(EventType.PROVISIONED),
    ]
    return _run(_claim_sql(), params, jobs, "activations")


def _run(sql: str, params: list, jobs: list, what: str) -> list[bool]:
    try:
        done = {int(row[0]) for row in sql_run(sql, params)}
    except DatabaseError:
        return _failed(jobs, what)
    return [n in done for n in range(len(jobs))]


def _in_transaction(store, jobs: list, what: str) -> list[bool]:
    """SQLite: `store(jobs)` in one transaction; it returns the numbers of the jobs done and
    the long polls to wake once they are committed."""
    try:
        with WRITER_LOCK.held(), transaction.atomic():
            done, stored = store(jobs)
    except DatabaseError:
        return _failed(jobs, what)
    for device_id, aliases in stored:
        longpoll.announce_local(device_id, aliases)
    return [n in done for n in range(len(jobs))]


class WriterLock:
    """SQLite: one batch at a time, across the batch threads of every server process, by a
    blocking `flock` on a file beside the database (an open file per thread, so threads of
    one process exclude each other too). Without it a second process's batch waits for
    SQLite's own lock in the busy handler, which polls with sleeps of up to 100 ms: with two
    workers the writes' p99 was 47 ms and the activations' 101 ms; with it, 12 and 14 ms
    (scripts/bench_device_api.py, WEB_CONCURRENCY=2)."""

    def __init__(self) -> None:
        self.local = threading.local()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if connection.is_in_memory_db():
            yield  # one process only
            return
        if (file := getattr(self.local, "file", None)) is None:
            path = f"{connection.settings_dict['NAME']}.batch-lock"
            file = self.local.file = open(path, "a")  # noqa: SIM115 (kept open: per thread)
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


WRITER_LOCK = WriterLock()


def _failed(jobs: list, what: str) -> list[bool]:
    log.exception("a batch of %d %s failed; each is retried on its own", len(jobs), what)
    if connection.connection is not None and not connection.is_usable():
        connection.close()
    return [False] * len(jobs)


def _store_writes(jobs: list[WriteJob]) -> tuple[set[int], list]:
    """SQLite: the checks of `_write_sql` after the ordinary path's lookup of each job's
    device, then values, last seen and events as one statement each for the batch."""
    window, limit = ratelimit.current_window(), settings.DEVICE_AUTH_FAILURE_LIMIT
    done, values, seen, logged, stored = set(), [], [], [], []
    for n, job in enumerate(jobs):
        params = [job.ip, window, job.connector_id, DeviceAuthType.TOKEN, *job.hashes]
        found = sql_run(auth.lookup_sql(auth.token_where(len(job.hashes))), params)
        if not found:
            continue
        device = found[0]  # DeviceContext's columns; its resources are not needed here
        device_id, identity, locked, devmode = device[0], device[1], device[4], device[5]
        last_ip, last_seen, failures, version = device[6], device[7], device[8], device[-1]
        if locked or not (devmode or job.secure) or (failures or 0) >= limit:
            continue
        if version != job.resources_version:
            continue
        done.add(n)
        values += [(device_id, *row, job.now) for row in job.rows]
        if last_ip != job.ip or last_seen is None or job.now - last_seen >= ACTIVITY_EVERY_US:
            seen.append((device_id, job.ip, job.now))
        logged.append(_event(job, EventType.DATA_IN, identity))
        stored.append((device_id, [alias for alias, _reported, _set in job.rows]))
    insert_rows(AliasValue, VALUE_COLUMNS, values, **UPSERT)
    insert_rows(DeviceActivity, ACTIVITY_COLUMNS, seen, **ACTIVITY_UPSERT)
    insert_rows(Event, events.COLUMNS, logged)
    return done, stored


def _store_claims(jobs: list[ClaimJob]) -> tuple[set[int], list]:
    """SQLite: the checks of `_claim_sql` (settings unchanged, address under its failure
    limit), the claims one by one, then last seen and events as one statement each."""
    ids = list({job.connector_id for job in jobs})
    current = dict(sql_run(_settings_sql(len(ids)), ids))
    failures = {
        (connector_id, ip): count
        for connector_id, ip, count in sql_run(
            _failures_sql(len(ids)), [ratelimit.current_window(), *ids]
        )
    }
    limit = settings.DEVICE_AUTH_FAILURE_LIMIT
    done, seen, logged = set(), [], []
    for n, job in enumerate(jobs):
        if job.connector_id not in current:
            continue
        if job.fingerprint and current[job.connector_id] != job.fingerprint:
            continue
        if failures.get((job.connector_id, job.ip), 0) >= limit:
            continue
        claimed = sql_run(*claim_statement(job))
        if claimed:
            done.add(n)
            seen.append((claimed[0][0], job.ip, job.now))
            logged.append(_event(job, EventType.PROVISIONED, job.identity))
    insert_rows(DeviceActivity, ACTIVITY_COLUMNS, seen, **ACTIVITY_UPSERT)
    insert_rows(Event, events.COLUMNS, logged)
    return done, []


def _event(job: WriteJob | ClaimJob, type: str, identity: str) -> tuple:
    summary, payload = job.summary, job.payload
    return (job.connector_id, job.now, str(type), identity, job.ip, None, "", summary, payload)


@lru_cache(maxsize=8)
def _settings_sql(ids: int) -> str:
    (table,) = tables(Connector)
    marks = ", ".join(["%s"] * ids)
    return f"SELECT c.id, {auth.fingerprint_sql('c')} FROM {table} c WHERE c.id IN ({marks})"  # noqa: S608


@lru_cache(maxsize=8)
def _failures_sql(ids: int) -> str:
    (table,) = tables(AuthFailure)
    return (
        f"SELECT connector_id, ip, count FROM {table} WHERE window_start = %s"  # noqa: S608
        f" AND connector_id IN ({', '.join(['%s'] * ids)})"
    )


CLAIMED_FIELDS = ("state", "auth_type", "secret_hash", "provisioned_at")


def claim_statement(job: ClaimJob) -> tuple[str, list]:
    """The one-time step as one conditional UPDATE: of concurrent activations of an identity,
    only one can still find it whitelisted (in its window) or flagged for reprovision."""
    provisioned_at = connection.ops.adapt_datetimefield_value(job.provisioned_at)
    params = [job.state, job.auth_type, job.secret_hash, provisioned_at, job.connector_id]
    params += [job.identity, False, Status.REPROVISION, Status.WHITELISTED, job.now]
    return _claim_one_sql(), params


@lru_cache(maxsize=1)
def _claim_one_sql() -> str:
    qn = connection.ops.quote_name
    sets = ", ".join(f"{qn(name)} = %s" for name in CLAIMED_FIELDS)
    return (
        f"UPDATE {tables(Device)[0]} SET {sets}"  # noqa: S608
        " WHERE connector_id = %s AND identity = %s AND locked = %s"
        " AND (state = %s OR (state = %s AND (expire IS NULL OR expire >= %s))) RETURNING id"
    )


@lru_cache(maxsize=1)
def _claim_sql() -> str:
    """One conditional UPDATE for all the identities (of concurrent activations of one
    identity, only one can still find it claimable), then last seen and the event. An
    identity is claimed only while its connector's settings are those it was checked
    against and its address is under the failure limit."""
    device, conn, activity, event, failure = tables(
        Device, Connector, DeviceActivity, Event, AuthFailure
    )
    job = ["connector_id", "identity", "state", "auth_type", "secret_hash"]
    job += ["provisioned_at::timestamptz", "now::bigint", "ip::inet", "summary", "payload"]
    return (
        f"WITH {_json_rows('job', [*job, 'fingerprint'])}, "  # noqa: S608
        f"checked AS (SELECT job.* FROM job JOIN {conn} c ON c.id = job.connector_id"
        f" AND (job.fingerprint = '' OR {auth.fingerprint_sql('c')} = job.fingerprint)"
        f" LEFT JOIN {failure} f ON f.connector_id = job.connector_id AND f.ip = job.ip"
        " AND f.window_start = %s WHERE COALESCE(f.count, 0) < %s), "
        f"claimed AS (UPDATE {device} d SET state = job.state, auth_type = job.auth_type,"
        " secret_hash = job.secret_hash, provisioned_at = job.provisioned_at FROM checked job"
        " WHERE d.connector_id = job.connector_id AND d.identity = job.identity"
        " AND d.locked = %s AND (d.state = %s OR (d.state = %s"
        " AND (d.expire IS NULL OR d.expire >= job.now))) RETURNING d.id, job.*), "
        f"seen AS (INSERT INTO {activity} (device_id, last_ip, last_seen)"
        " SELECT id, ip, now FROM claimed ON CONFLICT (device_id) DO UPDATE SET"
        " last_ip = excluded.last_ip, last_seen = excluded.last_seen), "
        f"logged AS (INSERT INTO {event} ({_event_columns()})"
        " SELECT connector_id, now, %s, identity, ip, NULL, '', summary, payload::jsonb"
        " FROM claimed) "
        "SELECT n FROM claimed"
    )
