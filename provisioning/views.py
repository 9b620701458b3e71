"""HTTP Device API views (SPEC.md sections 2-3), served at the root of a connector's host.

Views are thin: parse the wire format, authenticate through `provisioning.auth`, call one
service, answer with the status codes of the spec.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse

from connector.models import Connector
from provisioning import batch, longpoll, ratelimit, services, wire
from provisioning.auth import (
    authenticate,
    cached_connector,
    client_ip,
    load_connector,
    read_credentials,
    text,
    too_many,
    transport_ok,
)


def _body(request: HttpRequest) -> bytes:
    """The request body (read once, then kept), refusing more than 1 MiB before reading it."""
    if (cached := getattr(request, "_device_body", None)) is not None:
        return cached
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise wire.WireError(400, "bad Content-Length") from None
    if length > wire.MAX_BODY:
        raise wire.WireError(413, "the body is larger than 1 MiB")
    body = request.read(wire.MAX_BODY + 1)
    if len(body) > wire.MAX_BODY:
        raise wire.WireError(413, "the body is larger than 1 MiB")
    request._device_body = body
    return body


def _form_body(request: HttpRequest, empty: str) -> bytes:
    """The body of a form POST: 400 when empty, 415 when not form-encoded, 413 when too big."""
    body = _body(request)
    if not body:
        raise wire.WireError(400, empty)
    if not wire.is_form(request.META.get("CONTENT_TYPE", "")):
        raise wire.WireError(415, f"send {wire.FORM_TYPE}; charset=utf-8")
    return body


def timestamp(request: HttpRequest, connector_id: str) -> HttpResponse:
    if request.method != "GET":
        return text(405)
    if not Connector.objects.filter(pk=connector_id).exists():
        return text(404)
    return text(200, str(int(time.time())))


def activate(request: HttpRequest, connector_id: str) -> HttpResponse:
    if request.method != "POST":
        return text(405)
    if (answer := activate_in_batch(request, connector_id)) is not None:
        return answer
    ip = client_ip(request)
    connector, failures = load_connector(connector_id, ip)
    if connector is None:
        return text(404)
    if not transport_ok(request, connector):
        return text(403, "plain HTTP is refused: use HTTPS")
    if ratelimit.is_limited(failures):
        return too_many()
    try:
        fields = dict(wire.parse_pairs(_form_body(request, "id is required")))
    except wire.WireError as exc:
        return text(exc.status, exc.reason)
    identity = fields.get("id", fields.get("sn"))
    if not identity:
        return text(400, "id is required")
    outcome = services.activate_device(
        connector,
        identity,
        fields.get("password"),
        ip,
        secure=request.is_secure(),
        defer=_batched(request),
    )
    if outcome.pending is not None:
        request.META["iot.batch"] = outcome.pending  # answered once the front stored it
    return text(outcome.status, outcome.body, outcome.headers)


def _batched(request: HttpRequest) -> bool:
    """Under the server, not yet refused by a batch: a claim may go in one."""
    return bool(request.META.get("iot.front")) and "iot.batch.retry" not in request.META


def activate_in_batch(request: HttpRequest, connector_id: str) -> HttpResponse | None:
    """Under the server: an activation checked against the connector's settings as last
    read, with no query here. Its claim goes in a batch and holds only if those
    settings are unchanged and the address is under the failure limit. None: the ordinary
    path answers (it reads the settings afresh and gives, and logs, every refusal)."""
    if not _batched(request) or (cached := cached_connector(connector_id)) is None:
        return None
    connector, fingerprint = cached
    ip = client_ip(request)
    if not transport_ok(request, connector):
        return None
    try:
        fields = dict(wire.parse_pairs(_form_body(request, "id is required")))
    except wire.WireError:
        return None
    identity, password = fields.get("id", fields.get("sn")), fields.get("password")
    if not identity or services.activation_refusal(connector, identity, password, ip):
        return None
    outcome = services.activate_device(
        connector,
        identity,
        password,
        ip,
        secure=request.is_secure(),
        defer=True,
        fingerprint=fingerprint,
    )
    request.META["iot.batch"] = outcome.pending
    return text(outcome.status, outcome.body, outcome.headers)


def alias(request: HttpRequest, connector_id: str) -> HttpResponse:
    """Read (GET), write (POST) and hybrid write-then-read (POST with a query string)."""
    if request.method not in ("GET", "POST"):
        return text(405)
    if request.method == "POST" and (connection.vendor == "postgresql" or _batched(request)):
        # On PostgreSQL even alone: one statement. On SQLite, under the server: one thread
        # writes for all (see provisioning.batch).
        if (answer := write_in_batch(request, connector_id)) is not None:
            return answer
    device = authenticate(request, connector_id)
    if isinstance(device, HttpResponse):
        return device
    ip = client_ip(request)
    try:
        aliases = [
            wire.check_alias(a)
            for a in wire.parse_query_aliases(request.META.get("QUERY_STRING", ""))
        ]
        if request.method == "POST":
            pairs = wire.parse_write(_form_body(request, "nothing to write: send alias=value"))
            services.write_values(device, pairs, ip)
        elif "HTTP_REQUEST_TIMEOUT" in request.META:
            return long_poll(request, device, aliases, ip)
        elif not aliases:
            raise wire.WireError(400, "name the aliases to read: ?alias1&alias2")
    except wire.WireError as exc:
        return text(exc.status, exc.reason)
    if not aliases:
        return text(204)
    found = services.read_values(device, aliases, ip)
    if not found:
        return text(204)
    return HttpResponse(
        wire.encode_pairs(found),
        status=200,
        content_type="application/x-www-form-urlencoded; charset=utf-8",
    )


def long_poll(request: HttpRequest, device, aliases: list[str], ip: str) -> HttpResponse:
    """A read that waits (SPEC.md section 3): answers now when the alias is already newer
    than `If-Modified-Since`, else hands the wait to the server's event loop."""
    started_us = services.now_us()
    timeout_ms = longpoll.parse_timeout(request.META["HTTP_REQUEST_TIMEOUT"])
    since = longpoll.parse_since(request.META.get("HTTP_IF_MODIFIED_SINCE"))
    if len(aliases) != 1:
        raise wire.WireError(400, "long poll one alias: ?<alias>")
    definition = (device.resources or {}).get(aliases[0])
    if definition is None:
        raise wire.WireError(400, f"{aliases[0]} is not a defined resource")
    wait = longpoll.PollWait(
        device.pk, aliases[0], definition, since, started_us, time.monotonic() + timeout_ms / 1000
    )
    services.touch(device, ip, started_us)
    found = longpoll.read_current(wait)
    if found is None and request.META.get("iot.front"):
        request.META["iot.longpoll"] = wait  # the front waits; this thread is free
        return text(304)
    if found is None and (found := longpoll.wait_in_thread(wait)) is None:
        return text(304)
    body, headers = longpoll.answer(wait.alias, *found)
    response = HttpResponse(body, status=200)
    for name, value in headers:
        response[name] = value
    return response


def write_in_batch(request: HttpRequest, connector_id: str) -> HttpResponse | None:
    """The common write (token, no read-back, valid body): authenticated and stored together
    with the writes of other requests (`provisioning.batch`; one statement on PostgreSQL).
    Under the server this makes no query: the batch runs after it returns, the 204 returned
    here is sent once it committed, and otherwise the request comes back with
    `iot.batch.retry` set. Without the server (PostgreSQL only) it runs a batch of one.
    None means: answer through the ordinary path (which also gives every refusal)."""
    token = read_credentials(request).token
    if token is None or request.META.get("QUERY_STRING") or "iot.batch.retry" in request.META:
        return None
    try:
        pairs = wire.parse_write(_form_body(request, "nothing to write: send alias=value"))
    except wire.WireError:
        return None
    secure = request.is_secure() or settings.DEVICE_API_INSECURE
    job = services.write_job(connector_id, token, pairs, client_ip(request), secure=secure)
    if job is None:
        return None
    if _batched(request):
        request.META["iot.batch"] = job  # the front sends it with others, then answers
        return text(204)
    return text(204) if batch.write_jobs([job])[0] else None


def record(request: HttpRequest, connector_id: str) -> HttpResponse:
    if request.method != "POST":
        return text(405)
    device = authenticate(request, connector_id)
    if isinstance(device, HttpResponse):
        return device
    try:
        body = _form_body(request, "nothing to record: send alias=<alias>&<timestamp>=<value>")
        points = wire.parse_record(body, int(time.time()))
    except wire.WireError as exc:
        return text(exc.status, exc.reason)
    outcome = services.record_values(device, points, client_ip(request))
    return text(outcome.status, outcome.body)


ROUTES = {
    "/timestamp": timestamp,
    "/provision/activate": activate,
    "/onep:v1/stack/alias": alias,
    "/onep:v1/stack/record": record,
}
