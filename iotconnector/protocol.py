"""uvicorn's HTTP protocol (httptools), guarded against clients that hold connections open.

uvicorn closes an idle keep-alive connection, but sets no limit on a request whose headers
arrive slowly, nor on their size, nor on the number of connections: 1,200 connections
sending a header byte now and then exhausted a worker's file descriptors, and every request
failed until the client let go. Here, per worker:

- the request line and headers must be complete within HEADER_TIMEOUT seconds of the
  connection opening (or of the previous response, on a kept-alive connection), else the
  connection is answered 408 and closed; the body has REQUEST_BODY_TIMEOUT of its own
  (iotconnector.front);
- they may total MAX_HEADER_BYTES, else 431 and closed;
- at most MAX_CONNECTIONS connections are open at once (`connection_cap` sets the number
  from the process's descriptor limit, so descriptors never run out). A new connection
  beyond it takes the place of the one that has waited longest for its headers (answered
  408 and closed): that is a slow client or an idle kept-alive one, never a request being
  served. Only when every connection is busy with a request is the new one answered 503
  with Retry-After and closed. A slowloris client therefore cannot keep honest requests
  out, however many connections it opens: theirs are the ones that go.

Parked long polls are connections too and count towards the cap; they have sent their
headers, so neither the header timeout nor an eviction closes them.
"""

from __future__ import annotations

import collections
import logging
import resource

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

# Descriptors kept free of connections: database connections, the log, spooled bodies,
# the wake-up socket, the worker's own pipes.
RESERVED_DESCRIPTORS = 128
# How long a refused connection's further bytes are read and dropped before it is closed.
LINGER_S = 1.0


def raise_descriptor_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(configured: int, descriptors: int) -> int:
    """The connections a worker accepts at once: MAX_CONNECTIONS if set (0: from the limit),
    never more than its descriptors allow beside those it needs for itself."""
    room = max(16, descriptors - RESERVED_DESCRIPTORS)
    return min(configured, room) if configured > 0 else room


def _plain(status: bytes, text: str, extra: bytes = b"") -> bytes:
    body = text.encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: "
        + str(len(body)).encode()
        + b"\r\n"
        + extra
        + b"connection: close\r\n\r\n"
    ) + body


TOO_LARGE = "the request headers are too large"


async def _headers_too_large_app(scope, receive, send) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 431, "headers": headers})
    await send({"type": "http.response.body", "body": TOO_LARGE.encode()})


class Limits:
    """Set once per worker before it serves (`configure`)."""

    header_timeout = 10.0
    max_header_bytes = 64 * 1024
    max_connections = 10_000


def configure(*, header_timeout: float, max_header_bytes: int, max_connections: int) -> None:
    Limits.header_timeout = header_timeout
    Limits.max_header_bytes = max_header_bytes
    Limits.max_connections = max_connections


# This worker's connections waiting for a request's headers, longest-waiting first.
_waiting: collections.OrderedDict[GuardedHttpToolsProtocol, None] = collections.OrderedDict()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    _header_timer = None
    _header_bytes = 0
    _in_headers = False
    _discarding = False

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > Limits.max_connections:
            if _waiting:
                next(iter(_waiting))._headers_too_slow()  # the slowest makes room
            else:
                busy = "too many connections"
                transport.write(_plain(b"503 Service Unavailable", busy, b"retry-after: 1\r\n"))
                transport.close()
                return
        self._await_headers()

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._cancel_header_timer()
        _waiting[self] = None
        _waiting.move_to_end(self)
        self._in_headers = True
        self._header_bytes = 0
        self._header_timer = self.loop.call_later(Limits.header_timeout, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        _waiting.pop(self, None)
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._cancel_header_timer()
        if self._in_headers and not self.transport.is_closing():
            text = f"the request headers were not sent in time ({Limits.header_timeout:g} s)"
            self.transport.write(_plain(b"408 Request Timeout", text))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return  # answered 431: what the client still sends is read and dropped
        if self._in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._in_headers and self._header_bytes > Limits.max_header_bytes:
            self._headers_too_large()  # still no end of the headers past the limit

    def _headers_too_large(self) -> None:
        self._cancel_header_timer()
        self._in_headers = False
        if not self.transport.is_closing():
            # Closing with unread data would reset the connection and lose the answer: end
            # our side, drop what still comes for a moment (a lingering close), then close.
            self.transport.write(_plain(b"431 Request Header Fields Too Large", TOO_LARGE))
            self._discarding = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._cancel_header_timer()
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size <= Limits.max_header_bytes:
            super().on_headers_complete()
            return
        # Complete within one read, but too large: answered by a tiny app instead.
        app, self.app = self.app, _headers_too_large_app
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_headers()  # the next request on this connection, when it comes
