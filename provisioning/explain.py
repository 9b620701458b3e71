"""Why the store did not store a job: a read-only look at the rows as they are now, which
gives the refusal's answer and logs it once. Not a second execution of the request.

When nothing refuses the job any more (the connector's settings or definitions changed
after the job was checked, or its batch failed), the job, brought up to date, is executed
once more on its own; a second miss is answered 503.
"""

from __future__ import annotations

import dataclasses

from devices.models import Device
from provisioning import auth, connectors, rules, store
from provisioning.answers import NOT_FOUND, Answer, Pending, refused, text
from provisioning.jobs import (
    STORED,
    UNSTORED,
    CertificateJob,
    ClaimJob,
    JobResult,
    RecordJob,
    WriteJob,
)
from provisioning.refusals import activation_refused, certificate_refused, write_refused
from provisioning.values import split_write
from provisioning.wire import WireError

BUSY = text(503, "busy: try again", {"Retry-After": "1"})


def resolve(pending: Pending, result: JobResult) -> Answer:
    """The answer to a pending job, given what the store made of it."""
    if result is STORED:
        return pending.answer
    if isinstance(result, Answer):
        return result
    return explain(pending)


def complete(pending: Pending) -> Answer:
    """Store a pending job on this thread (a batch of one) and answer it."""
    return resolve(pending, store.run(pending.job))


def explain(pending: Pending, *, again: bool = True) -> Answer:
    job = pending.job
    if isinstance(job, WriteJob):
        found = _write(job)
    elif isinstance(job, ClaimJob):
        found = _claim(job)
    elif isinstance(job, CertificateJob):
        found = _certificate(job)
    else:
        found = _record(job)
    if isinstance(found, Answer):
        return found
    if not again:
        return BUSY
    retry = Pending(found, pending.answer)
    result = store.run(found)
    return explain(retry, again=False) if result is UNSTORED else resolve(retry, result)


def _write(job: WriteJob) -> Answer | WriteJob:
    if job.hashes:
        device = auth.by_token_hashes(job.connector_id, job.ip, job.hashes)
    else:
        device = auth.by_id(job.connector_id, job.ip, job.device_id)
    if device is None:
        return auth.refuse_unknown(job.connector_id, job.ip, job.secure, "unknown credentials")
    if refusal := auth.refusal_for(device, job.secure):
        return refused(refusal)
    entry, _failures = connectors.load(job.connector_id, job.ip)
    if entry is None:
        return NOT_FOUND
    try:
        rows, _ignored = split_write(entry.resources, job.pairs)
    except WireError as exc:
        return write_refused(job.connector_id, device.identity, job.pairs, job.ip, exc.reason)
    version = entry.resources_version
    return dataclasses.replace(job, rows=rows, resources_version=version, device_id=device.id)


def _claim(job: ClaimJob) -> Answer | ClaimJob:
    entry, failures = connectors.load(job.connector_id, job.ip)
    if entry is None:
        return NOT_FOUND
    connector = entry.connector
    if not rules.transport_allowed(job.secure, connector.devmode):
        return text(403, rules.PLAIN_HTTP)
    if rules.over_failure_limit(failures):
        return refused(rules.Refusal(429, rules.TOO_MANY))
    identity = job.identity
    refusal = rules.activation_refusal(connector, identity, job.password, job.ip)
    if refusal is None:
        row = (
            Device.objects.filter(connector_id=job.connector_id, identity=identity)
            .values_list("state", "locked", "expire")
            .first()
        )
        state, locked, expire = row or (None, False, None)
        register = rules.may_register(connector)
        refusal = rules.unclaimed_refusal(state, locked, expire, job.now, register=register)
    if refusal is not None:
        return activation_refused(job.connector_id, identity, job.ip, refusal)
    return dataclasses.replace(job, fingerprint=entry.fingerprint, register=register)


def _certificate(job: CertificateJob) -> Answer:
    if job.device_id is None:
        reason = "identity registered concurrently"
    else:
        row = Device.objects.filter(pk=job.device_id).values_list("locked", flat=True).first()
        if row:
            return text(403, rules.LOCKED)
        reason = "identity is provisioned with another credential, or expired"
    return certificate_refused(job.connector_id, job.identity, job.ip, reason)


def _record(job: RecordJob) -> Answer | RecordJob:
    device = auth.by_id(job.connector_id, job.ip, job.device_id)
    if device is None:
        return NOT_FOUND  # deleted while it was recording
    return job  # its batch failed: on its own, once more
