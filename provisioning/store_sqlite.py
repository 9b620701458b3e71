"""The store on SQLite: a batch is one transaction of a few statements, and the checks are
`provisioning.rules`' predicates, asked of rows read in that transaction.

SQLite has one writer at a time. Threads that each open a write transaction wait for its
lock in SQLite's busy handler, which sleeps (1, 2, 5 … 100 ms); batches instead take turns
on `store.WRITER_LOCK`, which hands over at once, and carry every waiting job.
"""

from __future__ import annotations

from functools import lru_cache

from django.db import connection, transaction

from connector import events, outbox
from connector.models import Connector, Event
from connector.sql import insert_rows, tables
from connector.sql import run as sql_run
from devices.models import AliasValue, DataPoint, Device, DeviceActivity
from provisioning import auth, connectors, longpoll, ratelimit, rules
from provisioning.jobs import STORED, UNSTORED, ClaimJob, JobResult, WriteJob
from provisioning.models import AuthFailure
from provisioning.rows import ACTIVITY_COLUMNS, ACTIVITY_UPSERT, WRITER_LOCK

VALUE_COLUMNS = ["device_id", "alias", "reported", "set", "timestamp"]
POINT_COLUMNS = ["device_id", "alias", "timestamp", "value"]
# Every written value is history too (devices.history), at the write's time; a point a
# record stored at the same µs is kept.
POINT_KEEP = {"conflict": ["device_id", "alias", "timestamp"]}
VALUE_UPSERT = {
    "conflict": ["device_id", "alias"],
    "update": ["reported", "timestamp"],
    "keep_if_null": ["set"],
}


def write(jobs: list[WriteJob]) -> list[JobResult]:
    with WRITER_LOCK.held(), transaction.atomic():
        results, values, points, seen, logged, stored, sent = [], [], [], [], [], [], []
        devices = auth.writers(jobs)  # one statement for the batch, not one per job
        for job in jobs:
            device = auth.writer(devices, job)
            if device is None or _refused(job, device):
                results.append(UNSTORED)
                continue
            results.append(STORED)
            values += [(device.id, r.alias, r.reported, r.set, job.now) for r in job.rows]
            points += [
                (device.id, r.alias, job.now, r.reported)
                for r in job.rows
                if r.reported is not None
            ]
            if rules.activity_due(device.last_ip, device.last_seen, job.ip, job.now):
                seen.append((device.id, job.ip, job.now))
            logged.append(job.event._replace(identity=device.identity))
            stored.append((device.id, [r.alias for r in job.rows]))
            if device.events_enabled:  # read by the lookup, in this transaction
                sent.append(_data_in(job, device.id, device.identity))
        insert_rows(AliasValue, VALUE_COLUMNS, values, **VALUE_UPSERT)
        insert_rows(DataPoint, POINT_COLUMNS, points, **POINT_KEEP)
        insert_rows(DeviceActivity, ACTIVITY_COLUMNS, seen, **ACTIVITY_UPSERT)
        insert_rows(Event, events.COLUMNS, logged)
        outbox.add(sent, checked=True)
        longpoll.announce_keys_local(
            [(device_id, alias) for device_id, aliases in stored for alias in aliases]
        )
    return results


def _data_in(job: WriteJob, device_id: int, identity: str) -> outbox.OutboxRow:
    payload = outbox.values_payload(job.now, job.pairs)
    return outbox.row(
        job.connector_id,
        "data_in",
        device_id,
        identity,
        job.ip,
        job.now,
        payload,
        job.protocol,
        job.connection_id,
    )


def _refused(job: WriteJob, device: auth.DeviceRow) -> bool:
    if device.resources_version != job.resources_version:
        return True  # checked against definitions that have changed since
    return auth.refusal_for(device, job.secure) is not None


def claim(jobs: list[ClaimJob]) -> list[JobResult]:
    with WRITER_LOCK.held(), transaction.atomic():
        ids = list({job.connector_id for job in jobs})
        found_settings = sql_run(_settings_sql(len(ids)), ids)
        current = {connector_id: fingerprint for connector_id, fingerprint, _on in found_settings}
        delivered = {connector_id for connector_id, _fingerprint, on in found_settings if on}
        window = ratelimit.current_window()
        failures = {
            (connector_id, ip): count
            for connector_id, ip, count in sql_run(_failures_sql(len(ids)), [window, *ids])
        }
        results, seen, logged, sent = [], [], [], []
        for job in jobs:
            if current.get(job.connector_id) != job.fingerprint or rules.over_failure_limit(
                failures.get((job.connector_id, job.ip))
            ):
                results.append(UNSTORED)
                continue
            found = sql_run(_claim_sql(), _claim_params(job))
            if not found and job.register:
                found = sql_run(_register_sql(), _register_params(job))
            if not found:
                results.append(UNSTORED)
                continue
            results.append(STORED)
            seen.append((found[0][0], job.ip, job.now))
            logged.append(job.event)
            if job.connector_id in delivered:
                provisioned = "provisioned", found[0][0], job.identity, job.ip, job.now
                sent.append(outbox.row(job.connector_id, *provisioned, protocol=job.protocol))
        insert_rows(DeviceActivity, ACTIVITY_COLUMNS, seen, **ACTIVITY_UPSERT)
        insert_rows(Event, events.COLUMNS, logged)
        outbox.add(sent, checked=True)
    return results


CLAIMED_FIELDS = ("state", "auth_type", "secret_hash", "provisioned_at")


def _claim_params(job: ClaimJob) -> list:
    provisioned_at = connection.ops.adapt_datetimefield_value(job.provisioned_at)
    return [job.state, job.auth_type, job.secret_hash, provisioned_at] + [
        job.connector_id,
        job.identity,
        job.now,
    ]


@lru_cache(maxsize=1)
def _claim_sql() -> str:
    qn = connection.ops.quote_name
    sets = ", ".join(f"{qn(name)} = %s" for name in CLAIMED_FIELDS)
    claimable = rules.sql_claimable(state="state", locked="locked", expire="expire", now="%s")
    return (
        f"UPDATE {tables(Device)[0]} SET {sets}"  # noqa: S608
        f" WHERE connector_id = %s AND identity = %s AND {claimable} RETURNING id"
    )


def _register_params(job: ClaimJob) -> list:
    provisioned_at = connection.ops.adapt_datetimefield_value(job.provisioned_at)
    fields = [job.connector_id, job.identity, job.state, False, job.auth_type, job.secret_hash]
    return [*fields, provisioned_at, provisioned_at]


@lru_cache(maxsize=1)
def _register_sql() -> str:
    return (
        f"INSERT INTO {tables(Device)[0]} (connector_id, identity, state, locked, auth_type,"  # noqa: S608
        " secret_hash, cert_pem, cert_fingerprint, cert_not_after, expire, created_at,"
        " provisioned_at) VALUES (%s, %s, %s, %s, %s, %s, '', '', NULL, NULL, %s, %s)"
        " ON CONFLICT (connector_id, identity) DO NOTHING RETURNING id"
    )


@lru_cache(maxsize=8)
def _settings_sql(ids: int) -> str:
    (table,) = tables(Connector)
    marks = ", ".join(["%s"] * ids)
    fingerprint = connectors.sql_fingerprint("c")
    return (
        f"SELECT c.id, {fingerprint}, c.events_enabled FROM {table} c"  # noqa: S608
        f" WHERE c.id IN ({marks})"
    )


@lru_cache(maxsize=8)
def _failures_sql(ids: int) -> str:
    (table,) = tables(AuthFailure)
    return (
        f"SELECT connector_id, ip, count FROM {table} WHERE window_start = %s"  # noqa: S608
        f" AND connector_id IN ({', '.join(['%s'] * ids)})"
    )
