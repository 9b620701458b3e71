"""Requests to `<connector-id>.<DEVICE_API_DOMAIN>` go to the device API, nothing else.

This middleware sits right after the trusted-proxy one and answers device requests itself, so
the device hot path skips sessions, CSRF, users and messages, which devices never use.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.http.request import split_domain_port

from provisioning.auth import text
from provisioning.views import ROUTES

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
