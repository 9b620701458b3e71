"""Trust boundary for headers set by the TLS terminator (nginx)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

# Headers only our own proxy may set. From anyone else they are dropped, so a client cannot
# claim HTTPS, another address or a client certificate by sending them itself.
FORWARDED_HEADERS = (
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_REAL_IP",
    "HTTP_X_SSL_CLIENT_CERT",
    "HTTP_FORWARDED",
)


def is_trusted_proxy(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in settings.TRUSTED_PROXIES)


def client_address(meta: dict, peer: str) -> str:
    """The client's address: walk X-Forwarded-For from the right past our own proxies."""
    chain = [p.strip() for p in meta.get("HTTP_X_FORWARDED_FOR", "").split(",") if p.strip()]
    address = peer
    for hop in reversed(chain):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break  # garbage in the header: stop at the last address we can vouch for
        address = hop
        if not is_trusted_proxy(hop):
            break
    return address


class TrustedProxyMiddleware:
    """Keep forwarded headers only from TRUSTED_PROXIES; set REMOTE_ADDR to the real client.

    The peer address is kept in `request.META["PEER_ADDR"]`.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        trust_forwarded(request.META)
        return self.get_response(request)


def trust_forwarded(meta: dict) -> None:
    """Apply the trust boundary to a request's META, once (see `TrustedProxyMiddleware`)."""
    peer = meta.get("REMOTE_ADDR", "")
    meta["PEER_ADDR"] = peer
    if is_trusted_proxy(peer):
        meta["REMOTE_ADDR"] = client_address(meta, peer)
    else:
        for header in FORWARDED_HEADERS:
            meta.pop(header, None)


class RefuseNulMiddleware:
    """A NUL in the path or query string (`%00` included) is refused with 400 before any
    view: no identity, filter or name holds one, and PostgreSQL refuses to compare text with
    it (the export sent 200, then cut the stream)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # PATH_INFO arrives decoded; QUERY_STRING as sent.
        raw = request.META.get("PATH_INFO", "") + request.META.get("QUERY_STRING", "")
        if "\x00" in raw or "%00" in raw:
            return refusal(request, 400, "the address contains a NUL character (%00)")
        return self.get_response(request)


class ContentSecurityPolicyMiddleware:
    """Every management response carries CONTENT_SECURITY_POLICY: the pages run only their
    own script and styles from static/ (no inline script, no eval), embed nothing, and
    cannot be framed."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        return response


def refusal(request: HttpRequest, status: int, reason: str) -> HttpResponse:
    """A refusal before any view: `{"detail": …}` on the management API, as its views answer,
    plain text elsewhere."""
    if request.path_info.startswith("/api:1/"):
        return JsonResponse({"detail": reason}, status=status)
    return HttpResponse(reason, status=status, content_type="text/plain; charset=utf-8")


UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class CrossOriginApiWriteMiddleware:
    """A browser may replay cached Basic credentials on a form another site posts to the
    management API: refuse any API write a browser marks as cross-site (`Sec-Fetch-Site`)
    or whose `Origin` is not this host. Scripts and curl send neither, and pages of this
    site send their own origin; session-authenticated writes also need the CSRF token."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method in UNSAFE_METHODS and request.path_info.startswith("/api:1/"):
            if reason := cross_origin(request):
                return refusal(request, 403, f"cross-origin API write refused: {reason}")
        return self.get_response(request)


def cross_origin(request: HttpRequest) -> str | None:
    site = request.META.get("HTTP_SEC_FETCH_SITE", "")
    if site and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {site[:20]}"
    origin = request.META.get("HTTP_ORIGIN")
    if origin is None:
        return None
    scheme, _, host = origin.partition("://")
    if origin == "null" or host != request.get_host() or scheme != request.scheme:
        return f"Origin {origin[:80]} is not this site"
    return None
