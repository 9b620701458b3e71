"""Requests to `<connector-id>.<DEVICE_API_DOMAIN>` go to the device API, nothing else.

This middleware sits right after the trusted-proxy one and answers device requests itself, so
the device hot path skips sessions, CSRF, users and messages, which devices never use.

The hottest two requests, a device write and an activation, are first offered to
`answer_in_loop`, which the server calls in its event loop before any thread or middleware:
it runs the same views' batch step on a real request (trust boundary and host check
included) and hands back the job to store, or None for the ordinary path.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpRequest, HttpResponse
from django.http.request import split_domain_port

from iotconnector.middleware import trust_forwarded
from provisioning import views
from provisioning.auth import text
from provisioning.views import ROUTES

# The requests the event loop may answer itself (each once its job is stored).
IN_LOOP = {
    "/onep:v1/stack/alias": views.write_in_batch,
    "/provision/activate": views.activate_in_batch,
}

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
        view = ROUTES.get(request.path_info)
        if not connector_id or view is None:
            return text(404)
        return view(request, connector_id)


def answer_in_loop(environ: dict) -> tuple[HttpResponse, object] | None:
    """A device write or activation ready to be stored in a batch, answered without Django's
    handler: the response to send once the job is stored, and the job. None for every other
    request, and whenever the ordinary path must decide. `environ` is left as it was (the
    body is read, though)."""
    if environ["REQUEST_METHOD"] != "POST" or environ["PATH_INFO"] not in IN_LOOP:
        return None
    request = WSGIRequest(dict(environ))
    trust_forwarded(request.META)
    try:
        host = request.get_host()
    except DisallowedHost:
        return None
    connector_id = device_host_connector(split_domain_port(host)[0])
    if not connector_id or (view := IN_LOOP.get(request.path_info)) is None:
        return None
    response = view(request, connector_id)
    job = request.META.get("iot.batch")
    return None if response is None or job is None else (response, job)
