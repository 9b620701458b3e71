"""The HTTP Device API (SPEC.md sections 2-3), served at the root of a connector's host.

Handlers parse the wire format, authenticate, call one service and return a typed result
(`provisioning.answers`): an answer, a job pending in the store, or a long poll to park. They
never answer by side channel. Whoever serves them resolves the result: the ASGI front in its
event loop (`iotconnector.front`), or `respond` on this thread (runserver, the test client).

`in_loop` is the part of the two hottest requests, a token write and an activation, that
needs no query: the front runs it in its event loop, before any thread.
"""

from __future__ import annotations

import time

from django.http import HttpRequest

from connector.models import Connector, now_us
from provisioning import auth, connectors, download, longpoll, rules, services, wire
from provisioning.answers import (
    FORM,
    NOT_ALLOWED,
    NOT_FOUND,
    Answer,
    Pending,
    Result,
    Wait,
    refused,
    text,
)
from provisioning.auth import DeviceRow, client_ip, read_credentials
from provisioning.certauth import authenticate_certificate
from provisioning.explain import complete

NO_WRITE = "nothing to write: send alias=value"


def handle(request: HttpRequest, connector_id: str) -> Result:
    """Any device API request (on a thread: it may query)."""
    handler = ROUTES.get(request.path_info)
    if not connector_id or handler is None:
        return NOT_FOUND
    return handler(request, connector_id)


def in_loop(request: HttpRequest, connector_id: str) -> Pending | None:
    """A token write or an activation checked against the connector as this process last
    read it, with no query; None: `handle` decides, on a thread. What the cache could not
    know (changed settings or definitions, the device and its token) the store checks."""
    if request.method != "POST" or not connector_id:
        return None
    if request.path_info == "/onep:v1/stack/alias":
        return _token_write(request, connector_id, connectors.cached(connector_id))
    if request.path_info == "/provision/activate":
        return _cached_activation(request, connector_id)
    return None


def respond(result: Result) -> Answer:
    """Resolve a result on this thread: a pending job stored as a batch of one, a long poll
    waited for by re-reading (plain WSGI holds its thread)."""
    if isinstance(result, Pending):
        return complete(result)
    if isinstance(result, Wait):
        found = longpoll.wait_in_thread(result.poll)
        return text(304) if found is None else poll_answer(result.poll.alias, *found)
    return result


def poll_answer(alias: str, value: str, timestamp_us: int) -> Answer:
    body, headers = longpoll.answer(alias, value, timestamp_us)
    kept = tuple((n, v) for n, v in headers if n not in ("Content-Type", "Content-Length"))
    return Answer(200, body, kept, content_type=FORM)


# --- Request parts ----------------------------------------------------------------------------


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


def authenticate(request: HttpRequest, connector_id: str) -> DeviceRow | Answer:
    """The device a request comes from (token, password or client certificate)."""
    cert = request.META.get("HTTP_X_SSL_CLIENT_CERT")  # kept only from trusted proxies
    if cert and read_credentials(request) == auth.Credentials():
        return authenticate_certificate(connector_id, client_ip(request), request.is_secure(), cert)
    return auth.authenticate(request, connector_id)


# --- Handlers ---------------------------------------------------------------------------------


def timestamp(request: HttpRequest, connector_id: str) -> Result:
    if request.method != "GET":
        return NOT_ALLOWED
    if not Connector.objects.filter(pk=connector_id).exists():
        return NOT_FOUND
    return text(200, str(int(time.time())))


def activate(request: HttpRequest, connector_id: str) -> Result:
    if request.method != "POST":
        return NOT_ALLOWED
    ip = client_ip(request)
    entry, failures = connectors.load(connector_id, ip)
    if entry is None:
        return NOT_FOUND
    if not rules.transport_allowed(request.is_secure(), entry.connector.devmode):
        return text(403, rules.PLAIN_HTTP)
    if rules.over_failure_limit(failures):
        return refused(rules.Refusal(429, rules.TOO_MANY))
    try:
        fields = wire.parse_fields(_form_body(request, "id is required"))
    except wire.WireError as exc:
        return text(exc.status, exc.reason)
    identity = fields.get("id", fields.get("sn"))
    if not identity:
        return text(400, "id is required")
    return services.activation(
        entry, identity, fields.get("password"), ip, secure=request.is_secure()
    )


def _cached_activation(request: HttpRequest, connector_id: str) -> Pending | None:
    if (entry := connectors.cached(connector_id)) is None:
        return None
    if not rules.transport_allowed(request.is_secure(), entry.connector.devmode):
        return None
    try:
        fields = wire.parse_fields(_form_body(request, "id is required"))
    except wire.WireError:
        return None
    identity, password = fields.get("id", fields.get("sn")), fields.get("password")
    ip = client_ip(request)
    if not identity or rules.activation_refusal(entry.connector, identity, password, ip):
        return None  # `activate` refuses it, and logs why
    found = services.activation(entry, identity, password, ip, secure=request.is_secure())
    return found if isinstance(found, Pending) else None


def _token_write(request: HttpRequest, connector_id: str, entry) -> Pending | None:
    """The common write (token, no read-back, a valid body) as a job whose device the store
    finds by the token; None: `alias` authenticates first."""
    token = read_credentials(request).token
    if entry is None or token is None or request.META.get("QUERY_STRING"):
        return None
    try:
        pairs = wire.parse_write(_form_body(request, NO_WRITE))
    except wire.WireError:
        return None
    ip = client_ip(request)
    return services.token_write(entry, token, pairs, ip, secure=request.is_secure())


def alias(request: HttpRequest, connector_id: str) -> Result:
    """Read (GET), write (POST) and hybrid write-then-read (POST with a query string)."""
    if request.method not in ("GET", "POST"):
        return NOT_ALLOWED
    ip = client_ip(request)
    if request.method == "POST" and read_credentials(request).token is not None:
        entry = connectors.ensure(connector_id, ip)
        if (pending := _token_write(request, connector_id, entry)) is not None:
            return pending
    device = authenticate(request, connector_id)
    if isinstance(device, Answer):
        return device
    try:
        aliases = [
            wire.check_alias(a)
            for a in wire.parse_query_aliases(request.META.get("QUERY_STRING", ""))
        ]
        if request.method == "POST":
            pairs = wire.parse_write(_form_body(request, NO_WRITE))
            written = services.device_write(device, pairs, ip, secure=request.is_secure())
            if isinstance(written, Answer) or not aliases:
                return written
            if (answer := complete(written)).status != 204:
                return answer  # a hybrid reads only what it stored
        elif "HTTP_REQUEST_TIMEOUT" in request.META:
            return long_poll(request, device, aliases, ip)
        elif not aliases:
            raise wire.WireError(400, "name the aliases to read: ?alias1&alias2")
    except wire.WireError as exc:
        return text(exc.status, exc.reason)
    if not aliases:
        return text(204)
    found = services.read(device, aliases, ip)
    if not found:
        return text(204)
    return Answer(200, wire.encode_pairs(found), content_type=FORM)


def long_poll(request: HttpRequest, device: DeviceRow, aliases: list[str], ip: str) -> Result:
    """A read that waits (SPEC.md section 3): answers now when the alias is already newer
    than `If-Modified-Since`, else a `Wait` for whoever serves it to park."""
    started_us = now_us()
    timeout_ms = longpoll.parse_timeout(request.META["HTTP_REQUEST_TIMEOUT"])
    since = longpoll.parse_since(request.META.get("HTTP_IF_MODIFIED_SINCE"))
    if len(aliases) != 1:
        raise wire.WireError(400, "long poll one alias: ?<alias>")
    definition = services.definitions(device, ip).resources.get(aliases[0])
    if definition is None:
        raise wire.WireError(400, f"{aliases[0]} is not a defined resource")
    poll = longpoll.PollWait(
        device.id, aliases[0], definition, since, started_us, time.monotonic() + timeout_ms / 1000
    )
    services.touch(device, ip, started_us)
    if (found := longpoll.read_current(poll)) is not None:
        return poll_answer(poll.alias, *found)
    return Wait(poll)


def record(request: HttpRequest, connector_id: str) -> Result:
    if request.method != "POST":
        return NOT_ALLOWED
    device = authenticate(request, connector_id)
    if isinstance(device, Answer):
        return device
    try:
        body = _form_body(request, "nothing to record: send alias=<alias>&<timestamp>=<value>")
        points = wire.parse_record(body, int(time.time()))
    except wire.WireError as exc:
        return text(exc.status, exc.reason)
    in_us = {alias: [(ts * 1_000_000, v) for ts, v in items] for alias, items in points.items()}
    return services.record(device, in_us, client_ip(request))


def content_download(request: HttpRequest, connector_id: str) -> Result:
    return download.download(request, connector_id, authenticate)


ROUTES = {
    "/timestamp": timestamp,
    "/provision/download": content_download,
    "/provision/activate": activate,
    "/onep:v1/stack/alias": alias,
    "/onep:v1/stack/record": record,
}
