"""The MQTT 3.1.1 codec of the device gateway (issue #16, first step): what paho-mqtt, a
real client, sends is read as the standard means it, and every malformed or unsupported
packet is a ProtocolError with its reason, never an exception of another kind."""

from __future__ import annotations

import socket
import struct
import threading

import paho.mqtt.client as mqtt
import pytest

from provisioning.mqtt import codec


def packet(first: int, body: bytes) -> bytes:
    return codec._packet(first, body)


def text(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(raw)) + raw


def connect_body(flags: int = 0x02, keepalive: int = 60, level: int = 4, payload: bytes = b""):
    return text("MQTT") + bytes([level, flags]) + struct.pack("!H", keepalive) + payload


class PahoPeer:
    """A one-connection server in a thread that answers with the codec: CONNACK, PUBACK,
    SUBACK, PINGRESP; it keeps every packet it read."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.packets: list = []
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        with self.sock:
            conn, _ = self.sock.accept()
        reader = codec.Reader()
        with conn:
            while data := conn.recv(65536):
                try:
                    found = reader.feed(data)
                except codec.ProtocolError as exc:
                    self.errors.append(str(exc))
                    return
                for item in found:
                    self.packets.append(item)
                    if isinstance(item, codec.Connect):
                        conn.sendall(codec.encode_connack(codec.ACCEPTED))
                        conn.sendall(codec.encode_publish("$resource/setpoint/1", b"19"))
                    elif isinstance(item, codec.Publish) and item.qos == 1:
                        conn.sendall(codec.encode_puback(item.packet_id))
                    elif isinstance(item, codec.Subscribe):
                        conn.sendall(codec.encode_suback(item.packet_id, [1] * len(item.filters)))
                    elif isinstance(item, codec.PingReq):
                        conn.sendall(codec.encode_pingresp())
                    elif isinstance(item, codec.Disconnect):
                        return


def test_what_paho_sends_reads_as_the_standard_means_it_and_paho_takes_the_answers():
    peer = PahoPeer()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv311)
    client.username_pw_set("", "t" * 40)
    received, acked = [], threading.Event()
    client.on_message = lambda c, u, message: received.append((message.topic, message.payload))
    client.on_publish = lambda c, u, mid, rc, props: acked.set()
    client.connect("127.0.0.1", peer.port, keepalive=30)
    client.loop_start()
    try:
        info = client.publish("$resource/temp", "21.5", qos=1)
        info.wait_for_publish(5)
        assert acked.wait(5) and info.is_published()
        client.publish("$resource.batch", '[{"timestamp": 1, "values": {"temp": 1}}]', qos=0)
        client.subscribe("$resource/#", qos=1)
        big = b"x" * 200_000  # a multi-byte remaining length
        last = client.publish("$resource/blob", big, qos=1)
        last.wait_for_publish(5)
        assert last.is_published()
    finally:
        client.disconnect()
        client.loop_stop()
    peer.thread.join(5)  # the peer has read everything up to the DISCONNECT
    assert not peer.thread.is_alive()
    assert peer.errors == []
    connect, *rest = peer.packets
    assert connect == codec.Connect("MQTT", 4, True, 30, "", "", b"t" * 40, False)
    publishes = [p for p in rest if isinstance(p, codec.Publish)]
    assert [(p.topic, p.qos) for p in publishes] == [
        ("$resource/temp", 1),
        ("$resource.batch", 0),
        ("$resource/blob", 1),
    ]
    assert publishes[0].payload == b"21.5" and publishes[2].payload == big
    assert publishes[0].packet_id and publishes[1].packet_id is None
    assert any(isinstance(p, codec.Subscribe) and p.filters == [("$resource/#", 1)] for p in rest)
    assert isinstance(rest[-1], codec.Disconnect)
    assert received == [("$resource/setpoint/1", b"19")]  # paho read the server's PUBLISH


def test_packets_split_anywhere_come_out_whole():
    stream = (
        packet(0x10, connect_body(payload=text("dev-1")))
        + packet(0x32, text("$resource/a") + b"\x00\x07" + b"42")
        + packet(0xC0, b"")
    )
    reader = codec.Reader()
    found = []
    for byte in stream:  # one byte at a time
        found += reader.feed(bytes([byte]))
    assert [type(p).__name__ for p in found] == ["Connect", "Publish", "PingReq"]
    assert found[0].client_id == "dev-1" and found[1].payload == b"42" and reader.pending == 0


def test_an_oversized_packet_is_refused_from_its_header_before_its_body_arrives():
    reader = codec.Reader(max_packet=1000)
    with pytest.raises(codec.ProtocolError, match="over 1000 bytes"):
        reader.feed(b"\x30\xe9\x07")  # remaining length 1001: nothing more is needed
    with pytest.raises(codec.ProtocolError, match="more than 4 bytes"):
        codec.Reader(max_packet=2**30).feed(b"\x30\xff\xff\xff\xff\x01")


def test_a_value_over_1_mib_is_refused():
    body = text("$resource/big") + b"\x00\x01" + b"x" * (codec.MAX_VALUE_BYTES + 1)
    with pytest.raises(codec.ProtocolError, match="over 1048576 bytes"):
        codec.Reader().feed(packet(0x32, body))


BAD = {
    "qos 2": packet(0x34, text("$resource/a") + b"\x00\x01x"),
    "qos 3": packet(0x36, text("$resource/a") + b"\x00\x01x"),
    "wildcard topic": packet(0x30, text("$resource/#") + b"x"),
    "empty topic": packet(0x30, text("") + b"x"),
    "topic not utf-8": packet(0x30, text(b"$resource/\xff\xfe") + b"x"),
    "topic with nul": packet(0x30, text("$resource/\x00") + b"x"),
    "packet id 0": packet(0x32, text("$resource/a") + b"\x00\x00x"),
    "dup on qos 0": packet(0x38, text("$resource/a") + b"x"),
    "short publish": packet(0x32, b"\x00\x10$res"),
    "connect reserved flag": packet(0x10, connect_body(flags=0x03, payload=text("d"))),
    "connect flags nibble": packet(0x11, connect_body(payload=text("d"))),
    "password without user": packet(0x10, connect_body(flags=0x42, payload=text("d") + text("p"))),
    "will qos without will": packet(0x10, connect_body(flags=0x0A, payload=text("d"))),
    "not mqtt": packet(0x10, text("MQIsdp") + b"\x03\x02\x00\x3c" + text("d")),
    "connect trailing bytes": packet(0x10, connect_body(payload=text("d") + b"zz")),
    "connect cut short": packet(0x10, text("MQTT") + b"\x04"),
    "subscribe flags": packet(0x80, b"\x00\x01" + text("a") + b"\x01"),
    "subscribe no filter": packet(0x82, b"\x00\x01"),
    "subscribe qos 3": packet(0x82, b"\x00\x01" + text("a") + b"\x03"),
    "unsubscribe none": packet(0xA2, b"\x00\x01"),
    "ping with body": packet(0xC0, b"x"),
    "disconnect flags": packet(0xE1, b""),
    "puback length": packet(0x40, b"\x00"),
    "server packet": packet(0x20, b"\x00\x00"),
    "pubrel": packet(0x62, b"\x00\x01"),
    "type 0": packet(0x00, b""),
    "type 15": packet(0xF0, b""),
}


@pytest.mark.parametrize("data", BAD.values(), ids=BAD.keys())
def test_every_malformed_or_unsupported_packet_is_a_protocol_error(data):
    with pytest.raises(codec.ProtocolError):
        codec.Reader().feed(data)


def test_a_wrong_protocol_level_is_read_so_the_session_can_answer_connack_1():
    (found,) = codec.Reader().feed(packet(0x10, connect_body(level=3, payload=text("d"))))
    assert found.level == 3 and found.client_id == ""


def test_the_server_packets_are_what_the_standard_spells():
    assert codec.encode_connack(codec.REFUSED_BAD_CREDENTIALS) == b"\x20\x02\x00\x04"
    assert codec.encode_connack(0, session_present=True) == b"\x20\x02\x01\x00"
    assert codec.encode_puback(7) == b"\x40\x02\x00\x07"
    assert codec.encode_pingresp() == b"\xd0\x00"
    assert codec.encode_suback(1, [1, 1]) == b"\x90\x04\x00\x01\x01\x01"
    assert codec.encode_publish("a/b", b"v", 1, 5) == b"\x32\x08\x00\x03a/b\x00\x05v"
    long = codec.encode_publish("t", b"x" * 200)
    assert long[1:3] == bytes([0x80 | (203 % 128), 203 // 128])  # two-byte remaining length
    with pytest.raises(ValueError):
        codec.encode_publish("t", b"", 1)
