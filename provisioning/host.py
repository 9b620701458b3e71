"""Requests to `<connector-id>.<DEVICE_API_DOMAIN>` go to the device API, nothing else.

The server's front (`iotconnector.front`) calls `route` for every request and hands device
requests to the device API (`provisioning.api`) itself, with no Django handler or middleware.
`DeviceHostMiddleware` does the same for runserver and the test client, right after the
trusted-proxy middleware, so the device API skips sessions, CSRF, users and messages, which
devices never use.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from django.conf import settings
from django.core.handlers.wsgi import WSGIRequest
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponse
from django.http.request import split_domain_port

from connector import content
from iotconnector.middleware import trust_forwarded
from provisioning import api, explain, store, wire
from provisioning.answers import Answer, Pending, Result, text
from provisioning.jobs import STORED, UNSTORED

log = logging.getLogger(__name__)

CONNECTOR_LABEL = re.compile(r"[a-z0-9]{14,20}")


def device_host_connector(host: str) -> str | None:
    """The connector id if `host` (without port) is a device API host, else None.

    Returns "" for a host under the device domain that cannot name a connector.
    """
    host = host.lower().rstrip(".")
    suffix = "." + settings.DEVICE_API_DOMAIN
    if not host.endswith(suffix) or host in settings.MANAGEMENT_HOSTS:
        return None
    label = host[: -len(suffix)]
    return label if CONNECTOR_LABEL.fullmatch(label) else ""


class DeviceHostMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        connector_id = device_host_connector(split_domain_port(request.get_host())[0])
        if connector_id is None:
            return self.get_response(request)
        return api.respond(api.handle(request, connector_id)).to_response()


class DeviceRequest(WSGIRequest):
    """A WSGIRequest for the device API, which reads its content type itself
    (`wire.is_form`): parsing it with the email package cost 5 % of a device write."""

    def _set_content_type_params(self, meta: dict) -> None:
        self.content_type = meta.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        self.content_params = {}


def route(environ: dict) -> tuple[WSGIRequest, str] | None:
    """A device API request and its connector id ("" when the host names none), with the
    trust boundary applied as the middleware applies it; None for any other request (and
    for a host Django must refuse), which Django answers.

    Django reads the host from Host (or SERVER_NAME; X-Forwarded-Host is not used), and a
    name `device_host_connector` accepts is one ALLOWED_HOSTS allows: no `get_host` here."""
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
    connector_id = device_host_connector(split_domain_port(host)[0])
    if connector_id is None:
        return None
    request = DeviceRequest(dict(environ))  # the environ stays as sent, for Django
    trust_forwarded(request.META)
    return request, connector_id


# The endpoints that take a CSV import (up to IMPORT_MAX_BYTES): the API's and the page's.
IMPORT_PATHS = re.compile(
    r"/api:1/service/[a-z0-9]{14,20}/device2/identities|/c/[a-z0-9]{14,20}/devices/import/"
)
# The Content tab's own upload (no JavaScript), for a signed-in user.
CONTENT_FORM_PATH = re.compile(r"/c/[a-z0-9]{14,20}/content/upload/")
# Content uploads (connector.content): only an authentic, unexpired ticket gets their limit.
UPLOAD_PATH = "/api:1/content-upload/"
# Multipart framing around the largest field or file.
MULTIPART_ROOM = 1024 * 1024


def body_limit(host: str, path: str, credentials: bool) -> int:
    """The largest request body a request may send, decided from its host, path and whether
    it carries credentials, before any of it is read (so nobody unauthenticated can make the
    server spool 128 MiB to disk)."""
    if device_host_connector(split_domain_port(host)[0]) is not None:
        return wire.MAX_BODY
    if credentials and IMPORT_PATHS.fullmatch(path):
        return settings.IMPORT_MAX_BYTES + MULTIPART_ROOM
    if credentials and CONTENT_FORM_PATH.fullmatch(path):
        return settings.CONTENT_MAX_BYTES + MULTIPART_ROOM
    if (ticket := path.removeprefix(UPLOAD_PATH)) != path and content.ticket_upload_id(ticket):
        return settings.CONTENT_MAX_BYTES + MULTIPART_ROOM  # a content upload, signed
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE + MULTIPART_ROOM


class DeviceAPI:
    """What the server's front needs of the device API: routing, the no-query step it runs
    in its event loop, the handlers and explanations it runs on its threads, and the store
    its batchers execute jobs with."""

    route = staticmethod(route)
    body_limit = staticmethod(body_limit)
    in_loop = staticmethod(api.in_loop)
    execute = staticmethod(store.execute)
    stored = STORED
    unstored = UNSTORED

    @staticmethod
    def handle(request: WSGIRequest, connector_id: str) -> Result:
        return _on_thread(api.handle, request, connector_id)

    @staticmethod
    def explain(pending: Pending) -> Answer:
        return _on_thread(explain.explain, pending)


def _on_thread(function, *args):
    """As Django's handler runs a request: stale connections closed before and after, and an
    exception logged and answered 500 rather than lost."""
    close_old_connections()
    try:
        return function(*args)
    except Exception:
        log.exception("the device API failed on %s", function.__name__)
        return text(500, "internal error")
    finally:
        close_old_connections()


DEVICE_API = DeviceAPI()
