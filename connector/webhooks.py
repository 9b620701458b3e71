"""Webhook delivery: Standard Webhooks signatures, destination checks, one HTTP POST.

Pure helpers (`new_secret`, `sign`, `signature_header`, `url_error`) and `post`, which sends
one body to a URL that has been checked again after DNS resolution: the connection goes to
the address that was vetted (no second lookup an attacker's DNS could answer differently),
with timeouts on connect and read, and at most RESPONSE_CAP bytes of the answer read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import ipaddress
import secrets
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)
RESPONSE_CAP = 1000
USER_AGENT = "iot-connector-webhooks/1"


def new_secret() -> str:
    """A signing secret as Standard Webhooks writes them: whsec_ + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">` under the secret's key."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signature_header(secrets_: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """One signature per secret, space-separated (both during a rotation's overlap)."""
    return " ".join(sign(s, msg_id, timestamp, body) for s in secrets_)


# --- Destinations -----------------------------------------------------------------------------


def url_error(url: str) -> str | None:
    """What is wrong with a webhook URL before any lookup, or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "use an https:// URL"
    if parts.scheme == "http" and not settings.EVENTS_ALLOW_PRIVATE_URLS:
        return "use an https:// URL (plain http only with EVENTS_ALLOW_PRIVATE_URLS)"
    if parts.username or parts.password:
        return "put credentials in the subscription's headers, not in the URL"
    if port == 0:
        return "not a valid port"
    if len(url) > 2000:
        return "at most 2,000 characters"
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return None  # a name: judged after resolution
    return address_error(address)


def address_error(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if settings.EVENTS_ALLOW_PRIVATE_URLS:
        return None
    if getattr(address, "ipv4_mapped", None):
        address = address.ipv4_mapped
    if not address.is_global or address.is_multicast:
        return f"{address} is a private, loopback or link-local address"
    return None


def resolve(host: str, port: int) -> str:
    """The address to connect to: the first the name resolves to, every one of them checked.
    Raises DeliveryError when a resolved address is refused."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DeliveryError(f"cannot resolve {host}: {exc.strerror}") from None
    addresses = [info[4][0] for info in found]
    for text in addresses:
        if reason := address_error(ipaddress.ip_address(text.split("%")[0])):
            raise DeliveryError(f"{host} resolves to {reason}")
    return addresses[0]


# --- Sending ----------------------------------------------------------------------------------


class DeliveryError(Exception):
    """No answer: refused destination, connection failure, timeout."""


@dataclass(frozen=True)
class Reply:
    status: int
    retry_after: float | None
    excerpt: str


_tls_context: ssl.SSLContext | None = None


def tls_context() -> ssl.SSLContext:
    """One verifying client context for every delivery (building one reads the CA store)."""
    global _tls_context
    if _tls_context is None:
        _tls_context = ssl.create_default_context()
    return _tls_context


class _Pinned(http.client.HTTPSConnection):
    """HTTP(S) to a name, connected to the address it was vetted at."""

    def __init__(self, host: str, port: int, address: str, tls: bool, timeout: float):
        super().__init__(host, port, timeout=timeout, context=tls_context())
        self._address, self._tls = address, tls

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        # http.client sends the headers and the body in two writes: without this, Nagle's
        # algorithm holds the body until the receiver's delayed ACK, 40 ms per delivery.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls:
            sock = self._context.wrap_socket(sock, server_hostname=self.host)
        self.sock = sock


class Sender:
    """POSTs to one URL over one kept-alive connection (opened again if the receiver closed
    it). The URL is checked and its name resolved and vetted once, when the sender is made:
    a sender lives for one batch of deliveries."""

    def __init__(self, url: str):
        if reason := url_error(url):
            raise DeliveryError(reason)
        parts = urlsplit(url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.address = resolve(self.host, self.port)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.connection: _Pinned | None = None

    def post(self, body: bytes, headers: dict[str, str]) -> Reply:
        """POST `body`; the answer's status, Retry-After (seconds) and its first bytes."""
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers}
        for attempt in (1, 2):
            reused = self.connection is not None
            if self.connection is None:
                self.connection = _Pinned(
                    self.host, self.port, self.address, self.tls, settings.EVENTS_TIMEOUT
                )
            try:
                self.connection.request("POST", self.path, body=body, headers=headers)
                response = self.connection.getresponse()
                excerpt = response.read(RESPONSE_CAP)
                if response.getheader("Connection", "").lower() == "close" or not (
                    response.isclosed() or response.length in (0, None)
                ):
                    self.close()  # closing, or an answer longer than we read: start afresh
                retry = _retry_after(response.getheader("Retry-After"))
                return Reply(response.status, retry, excerpt.decode("utf-8", "replace"))
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if reused and attempt == 1:
                    continue  # the receiver closed a kept-alive connection: once more, anew
                raise DeliveryError(f"{type(exc).__name__}: {exc}"[:300]) from None
        raise DeliveryError("no answer")  # not reached

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def post(url: str, body: bytes, headers: dict[str, str]) -> Reply:
    """One POST on a connection of its own."""
    sender = Sender(url)
    try:
        return sender.post(body, headers)
    finally:
        sender.close()


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isascii() and value.strip().isdigit() and len(value) < 10:
        return float(value)
    return None
