"""TLS for the MQTT gateway, in the event loop: OpenSSL (pyOpenSSL) over memory buffers.

Why not Python's `ssl` module: it judges a client certificate during the handshake against
the CAs it was given and cannot be told otherwise, so the tutorial's self-signed device
certificate (PKI off, bound on first use) would never get through. OpenSSL's verify
callback can: here it accepts whatever chain the client presents, and the application then
judges it with the same rules as the HTTPS path (`provisioning.certauth`): CN, validity,
the chain to the connector's client CAs when PKI is on, the stored certificate when off.

The connector is chosen before OpenSSL sees a byte: `server_name` reads the SNI from the
ClientHello, so an unknown name fails the handshake and a connector needs no query while
the TLS library runs. Everything here is pure (bytes in, bytes out); the gateway owns the
sockets.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from typing import NamedTuple

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

log = logging.getLogger(__name__)

# A ClientHello larger than this (handshake bytes) is refused; real ones are under 2 KiB
# (a few more with post-quantum key shares).
MAX_HELLO = 16 * 1024
RELOAD_CHECK_S = 1.0  # how often the certificate files' change times are looked at
NEED_MORE = object()  # server_name: not enough bytes yet


class TLSError(Exception):
    """The handshake or the record layer failed; the connection is closed."""


def server_name(data: bytes) -> str | None | object:
    """The host name a TLS ClientHello asks for (SNI), None when it names none or the bytes
    are not a ClientHello, `NEED_MORE` when the hello is not complete yet."""
    handshake = bytearray()
    offset = 0
    while True:
        if len(data) < offset + 5:
            return NEED_MORE
        kind, _major, _minor, length = struct.unpack_from("!BBBH", data, offset)
        if kind != 0x16 or length == 0 or length > 16384 + 2048:
            return None  # not a handshake record
        if len(data) < offset + 5 + length:
            return NEED_MORE
        handshake += data[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if len(handshake) >= 4:
            if handshake[0] != 1:
                return None  # not a ClientHello
            size = int.from_bytes(handshake[1:4], "big")
            if size > MAX_HELLO:
                return None
            if len(handshake) >= 4 + size:
                return _hello_server_name(bytes(handshake[4 : 4 + size]))


def _hello_server_name(hello: bytes) -> str | None:
    try:
        at = 2 + 32  # version, random
        at += 1 + hello[at]  # session id
        at += 2 + int.from_bytes(hello[at : at + 2], "big")  # cipher suites
        at += 1 + hello[at]  # compression methods
        if at + 2 > len(hello):
            return None  # no extensions
        end = at + 2 + int.from_bytes(hello[at : at + 2], "big")
        at += 2
        while at + 4 <= end:
            kind, size = struct.unpack_from("!HH", hello, at)
            at += 4
            if kind == 0:  # server_name: a list of (type, name)
                names = hello[at : at + size]
                pos = 2
                while pos + 3 <= len(names):
                    name_type, name_len = names[pos], int.from_bytes(names[pos + 1 : pos + 3])
                    name = names[pos + 3 : pos + 3 + name_len]
                    if name_type == 0 and len(name) == name_len:
                        return name.decode("ascii").lower().rstrip(".")
                    pos += 3 + name_len
                return None
            at += size
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    return None


def _accept_any_chain(_conn, _cert, _errno, _depth, _ok) -> bool:
    # The application judges the certificate after the handshake (see the module's docstring).
    return True


def server_context(cert_path: str, key_path: str) -> SSL.Context:
    """A server context: TLS 1.2 or newer, the certificate chain and key of these files, a
    client certificate asked for (not required) and never refused by OpenSSL itself."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.use_certificate_chain_file(cert_path)
    context.use_privatekey_file(key_path)
    context.check_privatekey()
    context.set_verify(SSL.VERIFY_PEER, _accept_any_chain)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    # Idle sessions keep no read or write buffers (most of an idle connection's memory).
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_session_id(b"iot-connector-mqtt")
    return context


class Credentials:
    """The server certificate of the files at these paths, read again when they change (a
    re-issued certificate is used by new connections without a restart)."""

    def __init__(self, cert_path: str, key_path: str):
        self.cert_path, self.key_path = cert_path, key_path
        self.lock = threading.Lock()
        self._context: SSL.Context | None = None
        self._stamp: tuple | None = None
        self._checked = 0.0

    def _files_stamp(self) -> tuple:
        cert, key = os.stat(self.cert_path), os.stat(self.key_path)
        return cert.st_mtime_ns, cert.st_size, key.st_mtime_ns, key.st_size

    def context(self) -> SSL.Context:
        now = time.monotonic()
        with self.lock:
            if self._context is None or now - self._checked >= RELOAD_CHECK_S:
                self._checked = now
                stamp = self._files_stamp()
                if stamp != self._stamp:
                    try:
                        self._context = server_context(self.cert_path, self.key_path)
                        self._stamp = stamp
                    except (SSL.Error, OSError):
                        # Caught between the key's and the certificate's rewrite: the one
                        # loaded before serves until the pair matches again.
                        if self._context is None:
                            raise
                        log.warning("MQTT: the new server certificate does not load yet")
            return self._context


class Received(NamedTuple):
    """What bytes from the network gave: plaintext for the application, bytes to send back,
    whether the peer closed the TLS session."""

    data: bytes = b""
    outgoing: bytes = b""
    closed: bool = False


class _Records:
    """The record layer's hot calls straight into OpenSSL, through pyOpenSSL's own binding
    and the handles its `Connection` holds (`_ssl`, `_into_ssl`, `_from_ssl`). pyOpenSSL's
    wrappers raise an exception for every read that finds nothing more (every packet ends
    with one, and so does every write's read of the outgoing buffer): that cost more than
    the rest of a PUBLISH. Here an empty read is a return value. The handshake, the
    certificates and every error's reason still go through pyOpenSSL."""

    def __init__(self):
        from OpenSSL import _util

        self.lib, self.ffi = _util.lib, _util.ffi
        self.error_from_queue = _util.exception_from_error_queue
        self.local = threading.local()  # a read buffer per thread (the loop's, in use)

    def buffer(self):
        found = getattr(self.local, "buffer", None)
        if found is None:
            found = self.local.buffer = self.ffi.new("char[]", READ_CHUNK)
        return found

    def decrypt(self, conn: SSL.Connection) -> tuple[bytes, bool]:
        """Plaintext of every whole record fed so far, and whether the peer closed."""
        lib, buf = self.lib, self.buffer()
        plain = []
        while True:
            count = lib.SSL_read(conn._ssl, buf, READ_CHUNK)
            if count > 0:
                plain.append(self.ffi.buffer(buf, count)[:])
                continue
            error = lib.SSL_get_error(conn._ssl, count)
            if error == lib.SSL_ERROR_WANT_READ:
                return b"".join(plain), False
            if error == lib.SSL_ERROR_ZERO_RETURN:
                return b"".join(plain), True
            self.fail(error)

    def feed(self, conn: SSL.Connection, data: bytes) -> None:
        """Bytes from the network into the connection's memory BIO, which takes them all."""
        if data and self.lib.BIO_write(conn._into_ssl, data, len(data)) <= 0:
            raise TLSError("the connection broke during TLS")

    def encrypt(self, conn: SSL.Connection, data: bytes) -> None:
        if not data:
            return
        count = self.lib.SSL_write(conn._ssl, data, len(data))
        if count <= 0:
            self.fail(self.lib.SSL_get_error(conn._ssl, count))

    def outgoing(self, conn: SSL.Connection) -> bytes:
        lib, buf = self.lib, self.buffer()
        out = []
        while (count := lib.BIO_read(conn._from_ssl, buf, READ_CHUNK)) > 0:
            out.append(self.ffi.buffer(buf, count)[:])
        return b"".join(out)

    def fail(self, error: int):
        if error == self.lib.SSL_ERROR_SSL:
            try:
                self.error_from_queue(SSL.Error)
            except SSL.Error as exc:
                raise TLSError(_reason(exc)) from None
        self.lib.ERR_clear_error()
        raise TLSError("the connection broke during TLS")


READ_CHUNK = 64 * 1024
_records = _Records()


class TLSServerConnection:
    """One server-side TLS connection over memory buffers."""

    __slots__ = ("conn", "handshaken")

    def __init__(self, context: SSL.Context):
        self.conn = SSL.Connection(context, None)
        self.conn.set_accept_state()
        self.handshaken = False

    def receive(self, data: bytes) -> Received:
        """Feed bytes read from the socket. Raises TLSError when the session is broken."""
        conn = self.conn
        _records.feed(conn, data)
        if not self.handshaken:
            try:
                conn.do_handshake()
                self.handshaken = True
            except SSL.WantReadError:
                return Received(b"", _records.outgoing(conn), False)
            except SSL.Error as exc:
                raise TLSError(_reason(exc)) from None
        plain, closed = _records.decrypt(conn)
        return Received(plain, _records.outgoing(conn), closed)

    def send(self, data: bytes) -> bytes:
        """The TLS records carrying `data`, to write to the socket."""
        _records.encrypt(self.conn, data)
        return _records.outgoing(self.conn)

    def close(self) -> bytes:
        """A close_notify to send (empty when the session never started)."""
        if not self.handshaken:
            return b""
        try:
            self.conn.shutdown()
        except SSL.Error:
            return b""
        return self.pending()

    def pending(self) -> bytes:
        return _records.outgoing(self.conn)

    def peer_chain_pem(self) -> str:
        """The certificates the client presented (its own first), as PEM; "" when none."""
        leaf = self.conn.get_peer_certificate(as_cryptography=True)
        if leaf is None:
            return ""
        # On a server, OpenSSL's peer chain leaves out the peer's own certificate.
        rest = self.conn.get_peer_cert_chain(as_cryptography=True) or []
        chain = [leaf, *(c for c in rest if c != leaf)]
        return "".join(c.public_bytes(Encoding.PEM).decode() for c in chain)


def _reason(exc: SSL.Error) -> str:
    if isinstance(exc, SSL.SysCallError):
        return "the connection broke during TLS"
    parts = []
    for item in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(item, tuple) and item:
            parts.append(str(item[-1]))
    return "TLS: " + (", ".join(parts) or exc.__class__.__name__)
