"""The store on PostgreSQL: a batch of writes, or of claims, is one statement.

A device write's own work in the database is small (find the device, upsert a value, append an
event); what it costs is the round trip around it: the statement's start, its commit, and the
server's wake-ups that follow. One statement per batch, whatever its size, with the jobs
passed as JSON (three parameters whatever the batch size: json.dumps is C, where adapting
arrays element by element cost more than the rest of the batch). The rules are
`provisioning.rules`' SQL encodings.
"""

from __future__ import annotations

import json
from functools import lru_cache

from django.conf import settings
from django.db import connection

from connector import events, outbox
from connector.models import Connector, Event, EventType, OutboxEvent
from connector.sql import run as sql_run
from connector.sql import tables
from devices.models import AliasValue, DataPoint, Device, DeviceActivity, DeviceAuthType
from provisioning import connectors, longpoll, ratelimit, rules
from provisioning.jobs import STORED, UNSTORED, ClaimJob, JobResult, WriteJob
from provisioning.models import AuthFailure


def write(jobs: list[WriteJob]) -> list[JobResult]:
    params = [
        json.dumps(
            [
                [n, j.connector_id, j.now, j.ip, j.secure, j.resources_version, j.device_id]
                + [j.event.summary, j.event.payload, outbox.values_payload(j.now, j.pairs)]
                + [j.protocol, j.connection_id, j.hashes, j.rows]  # rows: [alias, reported, set]
                for n, j in enumerate(jobs)
            ]
        ),
        DeviceAuthType.TOKEN,
        rules.ACTIVITY_EVERY_US,
        str(EventType.DATA_IN),
        settings.EVENTS_PARTITIONS,
    ]
    return _woken(_results(sql_run(_write_sql(), params), len(jobs)))


def claim(jobs: list[ClaimJob]) -> list[JobResult]:
    params = [
        json.dumps(
            [
                [n, j.connector_id, j.identity, j.state, j.auth_type, j.secret_hash]
                + [j.provisioned_at.isoformat(), j.now, j.ip, j.event.summary, j.event.payload]
                + [j.fingerprint, j.register, j.protocol]
                for n, j in enumerate(jobs)
            ]
        ),
        ratelimit.current_window(),
        settings.DEVICE_AUTH_FAILURE_LIMIT,
        str(EventType.PROVISIONED),
        settings.EVENTS_PARTITIONS,
    ]
    return _woken(_results(sql_run(_claim_sql(), params), len(jobs)))


def _woken(results: list[JobResult]) -> list[JobResult]:
    """Wake this process's relay when something was stored (it may have outbox rows)."""
    if STORED in results:
        outbox.wake()
    return results


def _results(rows: list[tuple], count: int) -> list[JobResult]:
    done = {int(row[0]) for row in rows}
    return [STORED if n in done else UNSTORED for n in range(count)]


def _json_rows(name: str, columns: list[str]) -> str:
    """A CTE of the rows of a JSON array of arrays passed as a parameter: element 0 is the
    job number `n`, then `columns` in order, each optionally cast (`"now::bigint"`) or kept
    as JSON (`"vals:json"`)."""
    fields = ["j->>0 AS n"]
    for index, column in enumerate(columns, start=1):
        if column.endswith(":json"):  # an array of its own, kept as JSON
            fields.append(f"j->{index} AS {column.removesuffix(':json')}")
            continue
        column, _, cast = column.partition("::")
        fields.append(f"(j->>{index})::{cast} AS {column}" if cast else f"j->>{index} AS {column}")
    select = ", ".join(fields)  # names from this module only; values are parameters
    return f"{name} AS (SELECT {select} FROM json_array_elements(%s::json) AS j)"  # noqa: S608


def _event_columns() -> str:
    return ", ".join(connection.ops.quote_name(c) for c in events.COLUMNS)


# The outbox rows a batch adds in its own statement (connector.outbox: the same columns).
_OUTBOX_INSERT = f"INSERT INTO {OutboxEvent._meta.db_table} ({', '.join(outbox.BATCH_COLUMNS)})"
_OUTBOX_WRITE = f"INSERT INTO {OutboxEvent._meta.db_table} ({', '.join(outbox.COLUMNS)})"


@lru_cache(maxsize=1)
def _write_sql() -> str:
    """The jobs come as one JSON array of arrays, each with its token hashes and its values
    as arrays of its own (`hashes`, `vals`), unnested beside their job: nothing is joined
    on the job number, so no plan can turn the batch into a nested loop of jobs × jobs (with
    statistics, the planner estimated one job and did so: a batch of 1,000 took 5 s). A job
    names its device by token hashes or by `device_id`. Several jobs may be one device's
    (`WriteJob.shares_batch`): each is logged, the last one's values and last seen are kept
    (an upsert may touch a row only once). LATERAL … LIMIT 1 keeps each lookup an index
    probe per job even in the generic plan of the prepared statement."""
    device, conn, activity, value, event, point = tables(
        Device, Connector, DeviceActivity, AliasValue, Event, DataPoint
    )
    job = ["connector_id", "now::bigint", "ip::inet", "secure::bool", "version::int"]
    job += ["device_id::bigint", "summary", "payload", "outbox", "protocol", "connection"]
    job += ["hashes:json", "vals:json"]
    allowed = rules.sql_device_allowed(
        locked="dev.locked", devmode="dev.devmode", secure="dev.secure"
    )
    due = rules.sql_activity_due(
        last_ip="ok.last_ip", last_seen="ok.last_seen", ip="ok.ip", now="ok.now"
    )
    values = (
        "CROSS JOIN LATERAL (SELECT v->>0 AS alias, v->>1 AS reported, v->>2 AS set_value"
        " FROM json_array_elements(ok.vals) AS v) val"
    )
    columns = "d.id, d.identity, d.locked, d.auth_type"
    return (
        f"WITH {_json_rows('job', job)}, "  # noqa: S608
        f"found AS (SELECT job.*, {columns} FROM job"
        " CROSS JOIN LATERAL json_array_elements_text(job.hashes) AS candidate(hash)"
        f" CROSS JOIN LATERAL (SELECT {columns} FROM {device} d"
        " WHERE d.connector_id = job.connector_id AND d.auth_type = %s"
        " AND NOT (d.secret_hash = '') AND d.secret_hash = candidate.hash LIMIT 1) d"
        # By primary key, the connector checked outside the LIMIT: a planner without
        # statistics yet (a new database) took the connector's identity index instead,
        # scanning every device of the connector per job.
        f" UNION ALL SELECT job.*, {columns} FROM job"
        f" CROSS JOIN LATERAL (SELECT {columns}, d.connector_id FROM {device} d"
        " WHERE d.id = job.device_id LIMIT 1) d WHERE d.connector_id = job.connector_id), "
        # The connector and last-seen rows by key, one lookup per job: planned again for a
        # grown table (connector.sql.PLAN_MAX_AGE), that is an index probe, where a join
        # left to the plan went on scanning the whole table once per batch.
        "dev AS (SELECT DISTINCT ON (found.n) found.*,"
        " c.devmode, c.resources_version, c.events_enabled, a.last_ip, a.last_seen"
        " FROM found CROSS JOIN LATERAL (SELECT c.devmode, c.resources_version,"
        f" c.events_enabled FROM {conn} c WHERE c.id = found.connector_id LIMIT 1) c"
        " LEFT JOIN LATERAL (SELECT a.last_ip, a.last_seen"
        f" FROM {activity} a WHERE a.device_id = found.id LIMIT 1) a ON true"
        " ORDER BY found.n), "
        f"ok AS MATERIALIZED (SELECT * FROM dev WHERE {allowed}"
        " AND dev.resources_version = dev.version), "
        f'stored AS (INSERT INTO {value} (device_id, alias, reported, "set", timestamp)'
        " SELECT DISTINCT ON (ok.id, val.alias) ok.id, val.alias, val.reported,"
        f" val.set_value, ok.now FROM ok {values}"
        " ORDER BY ok.id, val.alias, ok.n::int DESC"  # a device's writes: the last one's
        " ON CONFLICT (device_id, alias) DO UPDATE SET reported = excluded.reported,"
        f' "set" = COALESCE(excluded."set", {value}."set"), timestamp = excluded.timestamp'
        " RETURNING device_id, alias), "
        f"notified AS ({longpoll.NOTIFY_STORED}), "
        # Every written value is history too (devices.history), at the write's time.
        f"history AS (INSERT INTO {point} (device_id, alias, timestamp, value)"
        f" SELECT ok.id, val.alias, ok.now, val.reported FROM ok {values}"
        " WHERE val.reported IS NOT NULL ON CONFLICT DO NOTHING), "
        f"seen AS (INSERT INTO {activity} (device_id, last_ip, last_seen)"
        f" SELECT DISTINCT ON (ok.id) ok.id, ok.ip, ok.now FROM ok WHERE {due}"
        " ORDER BY ok.id, ok.n::int DESC"
        " ON CONFLICT (device_id) DO UPDATE SET last_ip = excluded.last_ip,"
        " last_seen = excluded.last_seen), "
        f"logged AS (INSERT INTO {event} ({_event_columns()})"
        " SELECT ok.connector_id, ok.now, %s, ok.identity, ok.ip, NULL, '', ok.summary,"
        " ok.payload::jsonb FROM ok), "
        f"outboxed AS ({_OUTBOX_WRITE} SELECT ok.connector_id, ok.id %% %s, 'data_in',"
        " ok.identity, host(ok.ip), ok.protocol, ok.now, ok.outbox, ok.connection FROM ok"
        " WHERE ok.events_enabled), "
        # The wake-ups are sent once: counted in a CTE of its own, not again per job.
        "notes AS MATERIALIZED (SELECT count(*) FROM notified) "
        "SELECT ok.n FROM ok, notes"
    )


@lru_cache(maxsize=1)
def _claim_sql() -> str:
    """One conditional UPDATE for all the identities (of concurrent activations of one
    identity, only one can still find it claimable), one INSERT for those that register
    themselves (of concurrent ones, the unique constraint lets one in), then last seen and
    the events. Only while the connector's settings are those the job was checked against
    and its address is under the failure limit."""
    device, conn, activity, event, failure = tables(
        Device, Connector, DeviceActivity, Event, AuthFailure
    )
    job = ["connector_id", "identity", "state", "auth_type", "secret_hash"]
    job += ["provisioned_at::timestamptz", "now::bigint", "ip::inet", "summary", "payload"]
    job += ["fingerprint", "register::bool", "protocol"]
    claimable = rules.sql_claimable(
        state="d.state", locked="d.locked", expire="d.expire", now="job.now"
    )
    done = "job.n, job.connector_id, job.identity, job.ip, job.now, job.summary, job.payload"
    done += ", job.protocol"
    return (
        f"WITH {_json_rows('job', job)}, "  # noqa: S608
        f"checked AS (SELECT job.* FROM job JOIN {conn} c ON c.id = job.connector_id"
        f" AND {connectors.sql_fingerprint('c')} = job.fingerprint"
        f" LEFT JOIN {failure} f ON f.connector_id = job.connector_id AND f.ip = job.ip"
        f" AND f.window_start = %s WHERE {rules.sql_under_failure_limit('f.count')}), "
        f"claimed AS (UPDATE {device} d SET state = job.state, auth_type = job.auth_type,"
        " secret_hash = job.secret_hash, provisioned_at = job.provisioned_at FROM checked job"
        " WHERE d.connector_id = job.connector_id AND d.identity = job.identity"
        f" AND {claimable} RETURNING d.id, {done}), "
        f"registered AS (INSERT INTO {device} (connector_id, identity, state, locked, auth_type,"
        " secret_hash, cert_pem, cert_fingerprint, cert_not_after, expire, created_at,"
        " provisioned_at) SELECT job.connector_id, job.identity, job.state, false,"
        " job.auth_type, job.secret_hash, '', '', NULL, NULL, job.provisioned_at,"
        " job.provisioned_at FROM checked job WHERE job.register"
        " ON CONFLICT (connector_id, identity) DO NOTHING RETURNING id, connector_id, identity), "
        f"done AS (SELECT * FROM claimed UNION ALL SELECT r.id, {done} FROM registered r"
        " JOIN checked job ON job.connector_id = r.connector_id AND job.identity = r.identity), "
        f"seen AS (INSERT INTO {activity} (device_id, last_ip, last_seen)"
        " SELECT id, ip, now FROM done ON CONFLICT (device_id) DO UPDATE SET"
        " last_ip = excluded.last_ip, last_seen = excluded.last_seen), "
        f"logged AS (INSERT INTO {event} ({_event_columns()})"
        " SELECT connector_id, now, %s, identity, ip, NULL, '', summary, payload::jsonb"
        " FROM done), "
        f"outboxed AS ({_OUTBOX_INSERT} SELECT done.connector_id, done.id %% %s, 'provisioned',"
        " done.identity, host(done.ip), done.protocol, done.now, '[]' FROM done"
        f" JOIN {conn} c ON c.id = done.connector_id WHERE c.events_enabled) "
        "SELECT n FROM done"
    )
