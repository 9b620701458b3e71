"""MQTT 3.1.1 packets, as a device gateway needs them: pure, no I/O.

`Reader` is fed the bytes of a connection as they come and hands back whole packets from a
client (CONNECT, PUBLISH, PUBACK, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT), checked as the
standard requires; anything else is a `ProtocolError` with the reason, after which the
connection is closed (3.1.1 has no error packet). The remaining length is judged from the
fixed header alone, so an oversized packet is refused before its body is buffered. The
`encode_*` functions build the server's packets.

Written here rather than taken from a library: the maintained Python MQTT packages are
clients or whole brokers with their own event loops and session stores (paho-mqtt, gmqtt,
amqtt), none exposes a sans-I/O server-side codec, and the 3.1.1 packets a gateway reads are
a few dozen lines each. paho-mqtt is the client the tests check this against.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

PROTOCOL_NAME = "MQTT"
PROTOCOL_LEVEL = 4  # 3.1.1

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14

# CONNACK return codes (3.1.1 section 3.2.2.3).
ACCEPTED = 0
REFUSED_PROTOCOL_VERSION = 1
REFUSED_IDENTIFIER = 2
REFUSED_UNAVAILABLE = 3
REFUSED_BAD_CREDENTIALS = 4
REFUSED_NOT_AUTHORIZED = 5

MAX_VALUE_BYTES = 1024 * 1024  # a value over 1 MiB is refused (SPEC.md section 8)
# The largest packet read: a 1 MiB value plus its topic and packet id.
DEFAULT_MAX_PACKET = MAX_VALUE_BYTES + 1024


class ProtocolError(ValueError):
    """A packet the standard does not allow, or this gateway does not take: close."""


@dataclass(frozen=True)
class Connect:
    protocol_name: str
    level: int
    clean_session: bool
    keepalive: int  # seconds, 0: none
    client_id: str
    username: str | None
    password: bytes | None
    will: bool


class Publish(NamedTuple):  # the packet of the hot path: a tuple is the cheapest to build
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None


@dataclass(frozen=True)
class PubAck:
    packet_id: int


@dataclass(frozen=True)
class Subscribe:
    packet_id: int
    filters: list[tuple[str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class Unsubscribe:
    packet_id: int
    filters: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PingReq:
    pass


@dataclass(frozen=True)
class Disconnect:
    pass


Packet = Connect | Publish | PubAck | Subscribe | Unsubscribe | PingReq | Disconnect


class Reader:
    """Whole packets out of a byte stream. `feed(data)` returns those now complete."""

    def __init__(self, max_packet: int = DEFAULT_MAX_PACKET):
        self.max_packet = max_packet
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[Packet]:
        buffer = self.buffer
        if buffer:  # the rest of a packet begun before: read once it is whole
            buffer += data
            header = _fixed_header(buffer, 0, self.max_packet)
            if header is None or len(buffer) < header[1] + header[2]:
                return []
            data = bytes(buffer)
            buffer.clear()
        packets = []
        at, end = 0, len(data)
        while at < end:
            header = _fixed_header(data, at, self.max_packet)
            if header is None:
                break
            first, length, start = header
            if end < start + length:
                break
            at = start + length
            packets.append(decode(first >> 4, first & 0x0F, data[start:at]))
        if at < end:
            buffer += data[at:]
        return packets

    @property
    def pending(self) -> int:
        """Bytes of a packet not complete yet (a slow sender's, say)."""
        return len(self.buffer)


def _fixed_header(data: bytes | bytearray, at: int, max_packet: int) -> tuple[int, int, int] | None:
    """(first byte, remaining length, where the body starts) of the packet at `at`, or None
    until its fixed header has come."""
    end = len(data)
    length, multiplier = 0, 1
    for index in range(at + 1, at + 5):
        if index >= end:
            return None
        byte = data[index]
        length += (byte & 0x7F) * multiplier
        if length > max_packet:
            raise ProtocolError(f"a packet of over {max_packet} bytes")
        if not byte & 0x80:
            return data[at], length, index + 1
        multiplier *= 128
    raise ProtocolError("malformed remaining length (more than 4 bytes)")


def decode(kind: int, flags: int, body: bytes) -> Packet:
    if kind == PUBLISH:
        return _publish(flags, body)
    if kind == CONNECT:
        _flags(flags, 0, "CONNECT")
        return _connect(body)
    if kind == PUBACK:
        _flags(flags, 0, "PUBACK")
        if len(body) != 2:
            raise ProtocolError("PUBACK: 2 bytes expected")
        return PubAck(struct.unpack("!H", body)[0])
    if kind == SUBSCRIBE:
        _flags(flags, 2, "SUBSCRIBE")
        return _subscribe(body)
    if kind == UNSUBSCRIBE:
        _flags(flags, 2, "UNSUBSCRIBE")
        return _unsubscribe(body)
    if kind in (PINGREQ, DISCONNECT):
        name = "PINGREQ" if kind == PINGREQ else "DISCONNECT"
        _flags(flags, 0, name)
        if body:
            raise ProtocolError(f"{name} has no body")
        return PingReq() if kind == PINGREQ else Disconnect()
    raise ProtocolError(f"packet type {kind} is not one a client sends to this server")


def _flags(flags: int, expected: int, name: str) -> None:
    if flags != expected:
        raise ProtocolError(f"{name}: reserved flags {flags:#x}")


class _Cursor:
    def __init__(self, body: bytes, name: str):
        self.body, self.at, self.name = body, 0, name

    def take(self, count: int) -> bytes:
        if self.at + count > len(self.body):
            raise ProtocolError(f"{self.name}: shorter than its fields")
        found = self.body[self.at : self.at + count]
        self.at += count
        return found

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("!H", self.take(2))[0]

    def binary(self) -> bytes:
        return self.take(self.u16())

    def text(self, what: str) -> str:
        raw = self.binary()
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{self.name}: {what} is not UTF-8") from None
        if "\x00" in value:
            raise ProtocolError(f"{self.name}: {what} holds U+0000")
        return value

    @property
    def rest(self) -> bytes:
        found = self.body[self.at :]
        self.at = len(self.body)
        return found

    @property
    def done(self) -> bool:
        return self.at == len(self.body)


def _connect(body: bytes) -> Connect:
    cursor = _Cursor(body, "CONNECT")
    name = cursor.text("the protocol name")
    level = cursor.u8()
    if name != PROTOCOL_NAME:
        raise ProtocolError(f"CONNECT: protocol {name!r}, not MQTT")
    flags = cursor.u8()
    keepalive = cursor.u16()
    if flags & 0x01:
        raise ProtocolError("CONNECT: the reserved flag is set")
    will, will_qos, will_retain = bool(flags & 0x04), (flags >> 3) & 0x03, bool(flags & 0x20)
    has_user, has_password = bool(flags & 0x80), bool(flags & 0x40)
    if will_qos == 3 or (not will and (will_qos or will_retain)):
        raise ProtocolError("CONNECT: will flags that do not fit together")
    if has_password and not has_user:
        raise ProtocolError("CONNECT: a password without a user name")
    if level != PROTOCOL_LEVEL:
        # Answered with CONNACK 1 by the session: keep what was read.
        return Connect(name, level, bool(flags & 0x02), keepalive, "", None, None, will)
    client_id = cursor.text("the client id")
    if will:
        cursor.text("the will topic")
        cursor.binary()
    username = cursor.text("the user name") if has_user else None
    password = cursor.binary() if has_password else None
    if not cursor.done:
        raise ProtocolError("CONNECT: bytes after its fields")
    return Connect(name, level, bool(flags & 0x02), keepalive, client_id, username, password, will)


def _publish(flags: int, body: bytes) -> Publish:
    """Read without a `_Cursor` (this is every device write), with the same checks."""
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise ProtocolError("PUBLISH: QoS 3 does not exist")
    if qos == 2:
        raise ProtocolError("PUBLISH: QoS 2 is not supported (use QoS 0 or 1)")
    size = len(body)
    topic_end = 2 + ((body[0] << 8) | body[1]) if size >= 2 else size + 1
    start = topic_end + 2 if qos else topic_end
    if start > size:
        raise ProtocolError("PUBLISH: shorter than its fields")
    try:
        topic = body[2:topic_end].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("PUBLISH: the topic is not UTF-8") from None
    if "\x00" in topic:
        raise ProtocolError("PUBLISH: the topic holds U+0000")
    if not topic or "+" in topic or "#" in topic:
        raise ProtocolError("PUBLISH: a topic name, not empty and without wildcards")
    packet_id = ((body[topic_end] << 8) | body[topic_end + 1]) if qos else None
    if packet_id == 0:
        raise ProtocolError("PUBLISH: packet id 0")
    if qos == 0 and flags & 0x08:
        raise ProtocolError("PUBLISH: DUP set on QoS 0")
    if size - start > MAX_VALUE_BYTES:
        raise ProtocolError(f"PUBLISH: a value of over {MAX_VALUE_BYTES} bytes")
    return Publish(topic, body[start:], qos, bool(flags & 0x01), bool(flags & 0x08), packet_id)


def _subscribe(body: bytes) -> Subscribe:
    cursor = _Cursor(body, "SUBSCRIBE")
    packet_id = cursor.u16()
    filters = []
    while not cursor.done:
        topic = cursor.text("a topic filter")
        qos = cursor.u8()
        if qos > 2 or not topic:
            raise ProtocolError("SUBSCRIBE: a topic filter and a QoS of 0-2 expected")
        filters.append((topic, qos))
    if not filters or packet_id == 0:
        raise ProtocolError("SUBSCRIBE: a packet id and at least one topic filter")
    return Subscribe(packet_id, filters)


def _unsubscribe(body: bytes) -> Unsubscribe:
    cursor = _Cursor(body, "UNSUBSCRIBE")
    packet_id = cursor.u16()
    filters = []
    while not cursor.done:
        filters.append(cursor.text("a topic filter"))
    if not filters or packet_id == 0:
        raise ProtocolError("UNSUBSCRIBE: a packet id and at least one topic filter")
    return Unsubscribe(packet_id, filters)


# --- The server's packets ---------------------------------------------------------------------


def _packet(first: int, body: bytes) -> bytes:
    length, encoded = len(body), bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            return bytes([first]) + bytes(encoded) + body


def _string(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def encode_connack(code: int, session_present: bool = False) -> bytes:
    return _packet(CONNACK << 4, bytes([int(session_present and code == 0), code]))


def encode_publish(topic: str, payload: bytes, qos: int = 0, packet_id: int | None = None) -> bytes:
    if qos not in (0, 1) or (qos == 1) != (packet_id is not None):
        raise ValueError("QoS 0 without a packet id, or QoS 1 with one")
    body = _string(topic) + (struct.pack("!H", packet_id) if packet_id is not None else b"")
    return _packet(PUBLISH << 4 | qos << 1, body + payload)


def encode_puback(packet_id: int) -> bytes:
    return _packet(PUBACK << 4, struct.pack("!H", packet_id))


def encode_suback(packet_id: int, granted: list[int]) -> bytes:
    return _packet(SUBACK << 4, struct.pack("!H", packet_id) + bytes(granted))


def encode_unsuback(packet_id: int) -> bytes:
    return _packet(UNSUBACK << 4, struct.pack("!H", packet_id))


def encode_pingresp() -> bytes:
    return _packet(PINGRESP << 4, b"")
