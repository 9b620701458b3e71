"""The MQTT Device API (SPEC.md section 8, issue #16) against the live server's own TLS:
paho-mqtt (and Exosite's gdc) as devices, real certificates from the local server CA."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import queue
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from connector.models import MQTT_PROTOCOL, Event, OutboxEvent, User
from connector.services import create_connector
from devices import services as device_services
from devices.models import AliasValue, DataPoint, Device, DeviceSession
from provisioning import tlsstack
from provisioning.mqtt import codec, tls
from provisioning.mqtt.gateway import Gateway
from tests.conftest import PASSWORD, define

GDC = Path(__file__).parent / "gdc_run.py"
_getaddrinfo = socket.getaddrinfo
# paho-mqtt 2 reports a 3.1.1 CONNACK return code as its MQTT 5 reason code.
V311_RETURN_CODE = {132: 1, 133: 2, 136: 3, 134: 4, 135: 5}


def _resolve(host, *args, **kwargs):
    if isinstance(host, str) and host.endswith(".localhost"):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mqtt-tls")
    tlsstack.server_certificate(folder, ["placeholder.localhost"])
    return folder


@pytest.fixture(scope="module")
def gateway(live_server, tls_dir, django_db_blocker):
    front = live_server.app
    credentials = tls.Credentials(str(tls_dir / "server.pem"), str(tls_dir / "server.key"))
    gw = Gateway(front, credentials, "127.0.0.1", 0)
    with django_db_blocker.unblock():
        asyncio.run_coroutine_threadsafe(gw.start(), front.loop).result(10)
    yield gw
    with django_db_blocker.unblock():
        asyncio.run_coroutine_threadsafe(gw.stop(), front.loop).result(10)


@pytest.fixture
def mqtt_connector(gateway, tls_dir, transactional_db, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", _resolve)
    monkeypatch.setattr(tls, "RELOAD_CHECK_S", 0.0)
    user = User.objects.create_user("maker@example.com", PASSWORD)
    connector = create_connector(user, "MQTT")
    connector.protocol_name = MQTT_PROTOCOL
    connector.id_type, connector.id_length = "base10", 8
    connector.save()
    define(connector, "temp", "label")
    define(connector, setpoint={"settable": True})
    tlsstack.server_certificate(tls_dir, [f"{connector.id}.localhost"])
    return connector


class Device_:
    """A paho-mqtt device of one connector: connects over TLS with the local server CA."""

    def __init__(self, connector, gateway, tls_dir, *, client_id="", cert=None, key=None):
        self.host = f"{connector.id}.localhost"
        self.port = gateway.port
        self.gateway = gateway
        self.messages: queue.Queue = queue.Queue()
        self.connacks: queue.Queue = queue.Queue()
        self.closed = threading.Event()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        client.tls_set(ca_certs=str(tls_dir / "ca.pem"), certfile=cert, keyfile=key)
        client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload, m.qos))
        client.on_connect = lambda c, u, flags, rc, props: self.connacks.put(
            V311_RETURN_CODE.get(rc.value, rc.value)
        )
        client.on_disconnect = lambda c, u, flags, rc, props: self.closed.set()
        self.client = client

    def connect(self, username=None, password=None) -> int:
        if username is not None or password is not None:
            self.client.username_pw_set(username or "", password)
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        return self.connacks.get(timeout=10)

    def publish(self, topic: str, payload, qos: int = 1):
        info = self.client.publish(topic, payload, qos=qos)
        if qos:
            info.wait_for_publish(10)
            assert info.is_published()
        return info

    def message(self, timeout: float = 5.0):
        return self.messages.get(timeout=timeout)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        settle(self.gateway)


@pytest.fixture
def make_device(mqtt_connector, gateway, tls_dir):
    made = []

    def make(**kwargs) -> Device_:
        device = Device_(mqtt_connector, gateway, tls_dir, **kwargs)
        made.append(device)
        return device

    yield make
    for device in made:
        device.client.disconnect()
        device.client.loop_stop()
    settle(gateway)


def settle(gateway) -> None:
    """Wait until the gateway holds no session and runs nothing (their disconnects are
    recorded before the test's database is emptied)."""
    wait_for(lambda: not gateway.sessions and all(t.done() for t in gateway.tasks), 10)


def wait_for(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def provision(make_device, identity: str) -> str:
    anonymous = make_device()
    assert anonymous.connect() == codec.ACCEPTED
    anonymous.publish(f"$provision/{identity}", b"")
    topic, token, _qos = anonymous.message()
    assert topic == f"$provision/{identity}"
    anonymous.stop()
    return token.decode()


def test_token_provisioning_then_writes_acknowledged_after_commit(mqtt_connector, make_device):
    type(mqtt_connector).objects.filter(pk=mqtt_connector.pk).update(events_enabled=True)
    device_services.whitelist_device(mqtt_connector, "00000001")
    token = provision(make_device, "00000001")
    assert len(token) == 40 and token.isalnum()
    stored = Device.objects.get(identity="00000001")
    assert stored.state == "provisioned" and stored.auth_type == "token"
    assert token not in stored.secret_hash
    assert Event.objects.filter(type="provisioned", identity="00000001").exists()

    device = make_device()
    assert device.connect("", token) == codec.ACCEPTED
    device.publish("$resource/temp", "21.5")
    # PUBACK came: the value is committed already.
    assert AliasValue.objects.get(device=stored, alias="temp").reported == "21.5"
    device.publish(
        "$resource.batch",
        json.dumps(
            [
                {"timestamp": 1_700_000_000, "values": {"temp": 20.5}},
                {"timestamp": 1_700_000_060_000_000, "values": {"temp": "20.7"}},
            ]
        ),
    )
    points = sorted(DataPoint.objects.filter(device=stored).values_list("timestamp", "value"))
    # The recorded points at their times, and the write before them at its own (history).
    assert points[:2] == [(1_700_000_000_000_000, "20.5"), (1_700_000_060_000_000, "20.7")]
    assert len(points) == 3 and points[2][1] == "21.5"
    assert wait_for(
        lambda: DeviceSession.objects.filter(device=stored, connected_at__isnull=False).exists()
    )
    assert Event.objects.filter(type="connect", identity="00000001").exists()
    # The device list and page show it connected, and since when.
    from django.test import Client
    from django.urls import reverse

    browser = Client()
    browser.force_login(User.objects.get(email="maker@example.com"))
    listing = browser.get(reverse("device-list", args=[mqtt_connector.id])).content.decode()
    assert "MQTT connected" in listing
    page = browser.get(
        reverse("device-detail", args=[mqtt_connector.id, "00000001"])
    ).content.decode()
    assert "Connected</span> since" in page
    device.stop()
    wait_for(lambda: Event.objects.filter(type="disconnect", identity="00000001").exists())
    assert DeviceSession.objects.get(device=stored).connected_at is None
    page = browser.get(
        reverse("device-detail", args=[mqtt_connector.id, "00000001"])
    ).content.decode()
    assert "Disconnected since" in page and "MQTT connected" not in page
    # The device events, as delivered: over MQTT, the session's id on connect and disconnect.
    outbox = list(OutboxEvent.objects.filter(identity="00000001").order_by("id"))
    assert [e.type for e in outbox] == [
        "provisioned",
        "connect",
        "data_in",
        "data_in",
        "disconnect",
    ]
    assert {e.protocol for e in outbox} == {"mqtt"}
    session = DeviceSession.objects.get(device=stored).connection
    # connect, both writes (the value and the batch) and disconnect: this session's
    assert {e.connection_id for e in outbox[1:]} == {session}


def test_bad_credentials_and_refusals_answer_their_connack(mqtt_connector, make_device):
    assert make_device().connect("", "X" * 40) == codec.REFUSED_BAD_CREDENTIALS
    device_services.whitelist_device(mqtt_connector, "00000002")
    token = provision(make_device, "00000002")
    assert make_device(client_id="00000009").connect("", token) == codec.REFUSED_IDENTIFIER
    assert make_device(client_id="00000002").connect("", token) == codec.ACCEPTED
    device_services.set_locked(mqtt_connector, Device.objects.filter(identity="00000002"), True)
    assert make_device().connect("", token) == codec.REFUSED_NOT_AUTHORIZED
    assert Event.objects.filter(type="auth_failed").exists()


def test_cloud_set_reaches_connected_sessions_and_pending_ones_on_connect(
    mqtt_connector, make_device
):
    device_services.whitelist_device(mqtt_connector, "00000003")
    token = provision(make_device, "00000003")
    row = Device.objects.get(identity="00000003")
    device_services.set_state(row, {"setpoint": "19"})  # before any session: sent on connect
    device = make_device()
    assert device.connect("", token) == codec.ACCEPTED
    topic, payload, _ = device.message()
    assert topic.startswith("$resource/setpoint/") and payload == b"19"
    device.publish("$resource/temp", "1")  # QoS 1 from now on
    started = time.monotonic()
    device_services.set_state(row, {"setpoint": "22"})
    topic, payload, qos = device.message()
    assert payload == b"22" and qos == 1
    assert int(topic.rsplit("/", 1)[1]) == AliasValue.objects.get(alias="setpoint").timestamp
    assert time.monotonic() - started < 1.0
    # The device's own write of a settable alias is not echoed back to it.
    device.publish("$resource/setpoint", "23")
    with pytest.raises(queue.Empty):
        device.message(timeout=0.5)


def test_a_set_stored_while_the_session_opens_is_not_missed(
    mqtt_connector, make_device, gateway, live_server
):
    """Sessions open in batches (the store's group commit). A cloud set committed after the
    batch read the device's set values, before the session is open, still goes down."""
    from iotconnector.front import Batcher
    from provisioning import store

    device_services.whitelist_device(mqtt_connector, "00000009")
    token = provision(make_device, "00000009")
    row = Device.objects.get(identity="00000009")

    def opened_then_set(jobs):
        results = store.execute(jobs)
        device_services.set_state(row, {"setpoint": "5"})  # its wake-up reaches the loop
        time.sleep(0.3)  # before the batch's results do
        return results

    front = live_server.app
    saved = front.batchers.pop("session", None)
    front.batchers["session"] = Batcher(opened_then_set, 64, failed=store.UNSTORED)
    try:
        device = make_device()
        assert device.connect("", token) == codec.ACCEPTED
        topic, payload, _ = device.message()
        assert topic.startswith("$resource/setpoint/") and payload == b"5"
        device.stop()
    finally:
        front.batchers.pop("session").stop()
        if saved is not None:
            front.batchers["session"] = saved


def test_a_newer_connection_closes_the_older(mqtt_connector, make_device):
    device_services.whitelist_device(mqtt_connector, "00000004")
    token = provision(make_device, "00000004")
    first = make_device()
    assert first.connect("", token) == codec.ACCEPTED
    first.client.reconnect_delay_set(60, 60)
    second = make_device()
    assert second.connect("", token) == codec.ACCEPTED
    assert first.closed.wait(5)
    second.publish("$resource/temp", "5")


def test_a_newer_connection_whose_open_fails_leaves_the_older_connected(
    mqtt_connector, make_device, monkeypatch
):
    """The older session is closed only once the newer one's open is stored: when the
    store's batch fails (CONNACK 3), the device stays connected as it was."""
    from django.db import DatabaseError

    from provisioning import store

    device_services.whitelist_device(mqtt_connector, "00000024")
    token = provision(make_device, "00000024")
    first = make_device()
    assert first.connect("", token) == codec.ACCEPTED
    first.client.reconnect_delay_set(60, 60)

    def fails(jobs):
        raise DatabaseError("the database is away")

    monkeypatch.setattr(store, "_sessions", fails)
    second = make_device()
    second.client.reconnect_delay_set(60, 60)
    assert second.connect("", token) == codec.REFUSED_UNAVAILABLE
    assert not first.closed.wait(0.5)
    first.publish("$resource/temp", "6")  # acknowledged after its commit
    assert AliasValue.objects.get(alias="temp").reported == "6"


def self_signed(identity: str, folder: Path) -> tuple[str, str]:
    """The tutorial's `openssl req -x509` device certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{identity}.pem", folder / f"{identity}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def test_self_signed_certificate_is_bound_on_first_use(mqtt_connector, make_device, tmp_path):
    mqtt_connector.auth_type = "certificate"
    mqtt_connector.presenter_identity = True
    mqtt_connector.save()
    cert, key = self_signed("00000005", tmp_path)
    device = make_device(cert=cert, key=key)
    assert device.connect() == codec.ACCEPTED
    device.publish("$resource/temp", "7")
    row = Device.objects.get(identity="00000005")
    assert row.cert_fingerprint and AliasValue.objects.get(device=row).reported == "7"
    device.stop()
    # Another key with the same CN is not that device.
    other_cert, other_key = self_signed("00000005", tmp_path / "..")
    assert make_device(cert=other_cert, key=other_key).connect() == codec.REFUSED_BAD_CREDENTIALS


def test_a_pki_signed_certificate_connects_and_a_self_signed_one_does_not(
    mqtt_connector, make_device, tmp_path
):
    from connector.models import ClientCA
    from tests.certs import key_pem, make_cert, pem

    ca_cert, ca_key = make_cert("Factory CA", ca=True)
    mqtt_connector.auth_type = "certificate"
    mqtt_connector.presenter_identity = True
    mqtt_connector.pki_enabled = True
    mqtt_connector.save()
    ClientCA.objects.create(
        connector=mqtt_connector,
        pem=pem(ca_cert),
        fingerprint="f" * 64,
        subject="CN=Factory CA",
        not_after=ca_cert.not_valid_after_utc,
    )
    leaf, leaf_key = make_cert("00000015", issuer_cert=ca_cert, issuer_key=ca_key)
    cert_path, key_path = tmp_path / "leaf.pem", tmp_path / "leaf.key"
    cert_path.write_text(pem(leaf) + pem(ca_cert))  # the device's certificate, then its CA
    key_path.write_text(key_pem(leaf_key))
    device = make_device(cert=str(cert_path), key=str(key_path))
    assert device.connect() == codec.ACCEPTED
    device.publish("$resource/temp", "15")
    row = Device.objects.get(identity="00000015")
    assert row.state == "provisioned" and AliasValue.objects.get(device=row).reported == "15"
    device.stop()
    # PKI on: a certificate no client CA signed is refused, however well formed.
    cert, key = self_signed("00000016", tmp_path)
    assert make_device(cert=cert, key=key).connect() == codec.REFUSED_BAD_CREDENTIALS
    assert not Device.objects.filter(identity="00000016").exists()


def test_password_provisioning_then_the_identity_and_password_connect(mqtt_connector, make_device):
    mqtt_connector.auth_type = "password"
    mqtt_connector.save()
    device_services.whitelist_device(mqtt_connector, "00000014")
    password = "correct horse battery staple"
    anonymous = make_device()
    assert anonymous.connect() == codec.ACCEPTED
    anonymous.publish("$provision/00000014", password)
    topic, payload, _qos = anonymous.message()
    assert (topic, payload) == ("$provision/00000014", b"")  # nothing to hand back
    anonymous.stop()
    row = Device.objects.get(identity="00000014")
    assert row.state == "provisioned" and row.auth_type == "password"
    assert password not in row.secret_hash
    wrong = make_device(client_id="00000014")
    assert wrong.connect("00000014", "not the password at all") == codec.REFUSED_BAD_CREDENTIALS
    device = make_device(client_id="00000014")
    assert device.connect("00000014", password) == codec.ACCEPTED
    device.publish("$resource/temp", "14")
    assert AliasValue.objects.get(device=row, alias="temp").reported == "14"


def test_an_address_over_the_failure_limit_gets_connack_3(mqtt_connector, make_device, settings):
    settings.DEVICE_AUTH_FAILURE_LIMIT = 2
    codes = [make_device().connect("", "X" * 40) for _ in range(3)]
    assert codes == [codec.REFUSED_BAD_CREDENTIALS] * 2 + [codec.REFUSED_UNAVAILABLE]
    assert Event.objects.filter(type="auth_failed").count() == 2  # the throttled one is not


def test_locking_deleting_or_turning_mqtt_off_ends_sessions_at_once(
    mqtt_connector, make_device, raw_tls
):
    from rest_framework.test import APIClient

    identities = ["00000011", "00000012", "00000013"]
    for identity in identities:
        device_services.whitelist_device(mqtt_connector, identity)
    tokens = {identity: provision(make_device, identity) for identity in identities}
    sessions = {}
    for identity, token in tokens.items():
        sessions[identity] = make_device()
        sessions[identity].client.reconnect_delay_set(60, 60)
        assert sessions[identity].connect("", token) == codec.ACCEPTED
    disconnects = Event.objects.filter(type="disconnect")

    def ended(identity: str) -> None:
        assert sessions[identity].closed.wait(5)  # at once, not at its next PUBLISH
        # Recorded before the test's next change (SQLite here: one shared connection).
        wait_for(lambda: disconnects.filter(identity=identity).exists())
        settle_tasks()

    def settle_tasks() -> None:
        gateway = sessions["00000013"].gateway
        wait_for(lambda: all(t.done() for t in gateway.tasks), 10)

    locked = Device.objects.filter(identity="00000011")
    device_services.set_locked(mqtt_connector, locked, True)
    ended("00000011")
    device_services.delete_devices(mqtt_connector, Device.objects.filter(identity="00000012"))
    ended("00000012")
    assert not sessions["00000013"].closed.is_set()  # the others' changes leave it be
    sessions["00000013"].publish("$resource/temp", "13")
    # Back to HTTP only (the settings JSON): its last session ends, new ones fail TLS.
    api = APIClient()
    api.force_authenticate(User.objects.get(email="maker@example.com"))
    url = f"/api:1/service/{mqtt_connector.id}/device2"
    response = api.patch(url, {"protocol": {"name": "onep:v1/http"}}, format="json")
    assert response.status_code == 204
    ended("00000013")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        raw_tls()


def test_puback_waits_for_the_commit_the_database_holds_back(mqtt_connector, make_device):
    from django.db import connection, transaction

    if connection.vendor != "postgresql":
        pytest.skip("a row lock from another connection: runs in the PostgreSQL pass")
    device_services.whitelist_device(mqtt_connector, "00000017")
    token = provision(make_device, "00000017")
    device = make_device()
    assert device.connect("", token) == codec.ACCEPTED
    device.publish("$resource/temp", "1")
    row = Device.objects.get(identity="00000017")
    with transaction.atomic():
        AliasValue.objects.select_for_update().get(device=row, alias="temp")  # held
        info = device.client.publish("$resource/temp", "2", qos=1)
        time.sleep(0.8)
        assert not info.is_published()  # no PUBACK while the commit cannot happen
    info.wait_for_publish(10)
    assert info.is_published()
    assert AliasValue.objects.get(device=row, alias="temp").reported == "2"


@pytest.fixture
def raw_tls(mqtt_connector, gateway, tls_dir):
    """TLS sockets to the gateway, closed after the test."""
    opened = []

    def connect(server_name=None) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))
        sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
        opened.append(sock)
        name = server_name or f"{mqtt_connector.id}.localhost"
        wrapped = context.wrap_socket(sock, server_hostname=name)
        opened.append(wrapped)
        return wrapped

    yield connect
    for sock in opened:
        sock.close()
    settle(gateway)


def closed(sock: ssl.SSLSocket) -> bool:
    try:
        return sock.recv(1024) == b""
    except (ConnectionError, ssl.SSLError):
        return True


def test_unknown_server_name_fails_the_handshake(raw_tls):
    with pytest.raises((ssl.SSLError, ConnectionError)):
        raw_tls("nosuchconnector00.localhost")


@pytest.mark.parametrize(
    "first",
    [
        codec._packet(0x30, codec._string("$resource/temp") + b"1"),  # PUBLISH before CONNECT
        b"\x10\xff\xff\xff\xff\x7f",  # a malformed remaining length
        codec._packet(0x82, b"\x00\x01" + codec._string("$resource/#") + b"\x01"),
    ],
    ids=["publish-first", "bad-length", "subscribe-first"],
)
def test_bad_packets_close_the_connection(raw_tls, first):
    sock = raw_tls()
    sock.sendall(first)
    assert closed(sock)


def test_wrong_protocol_level_gets_connack_1(raw_tls):
    sock = raw_tls()
    body = codec._string("MQTT") + bytes([3, 0x02]) + b"\x00\x3c" + codec._string("x")
    sock.sendall(codec._packet(0x10, body))
    assert sock.recv(4) == codec.encode_connack(codec.REFUSED_PROTOCOL_VERSION)
    assert closed(sock)


def connect_raw(sock, keepalive: int = 60, password: bytes | None = None) -> bytes:
    flags = 0x02 | (0xC0 if password is not None else 0)
    body = codec._string("MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big")
    body += codec._string("")
    if password is not None:
        body += codec._string("") + len(password).to_bytes(2, "big") + password
    sock.sendall(codec._packet(0x10, body))
    return sock.recv(4)


def test_a_session_silent_past_one_and_a_half_keepalives_is_closed(raw_tls):
    sock = raw_tls()
    assert connect_raw(sock, keepalive=1) == codec.encode_connack(codec.ACCEPTED)
    sock.settimeout(10)
    started = time.monotonic()
    assert closed(sock)
    assert time.monotonic() - started >= 1.4  # not before 1.5 × its keepalive


def test_connections_from_one_address_are_capped(raw_tls, settings):
    settings.MQTT_MAX_PER_IP = 2
    first, second = raw_tls(), raw_tls()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        raw_tls()
    assert connect_raw(first) == codec.encode_connack(codec.ACCEPTED)
    assert connect_raw(second) == codec.encode_connack(codec.ACCEPTED)


def test_a_publish_flood_is_slowed_to_the_rate_and_loses_nothing(
    mqtt_connector, make_device, settings
):
    settings.MQTT_PUBLISH_RATE, settings.MQTT_PUBLISH_BURST = 20.0, 5
    device_services.whitelist_device(mqtt_connector, "00000010")
    token = provision(make_device, "00000010")
    device = make_device()
    assert device.connect("", token) == codec.ACCEPTED
    started = time.monotonic()
    infos = [device.client.publish("$resource/temp", str(n), qos=1) for n in range(30)]
    for info in infos:
        info.wait_for_publish(20)
        assert info.is_published()
    # 25 beyond the burst at 20 a second: the gateway cannot have taken them faster.
    assert time.monotonic() - started >= 25 / 20 - 0.05
    assert AliasValue.objects.get(alias="temp").reported == "29"
    assert Event.objects.filter(type="data_in", identity="00000010").count() == 30


def test_qos2_and_foreign_topics_close_an_authenticated_session(mqtt_connector, make_device):
    device_services.whitelist_device(mqtt_connector, "00000006")
    token = provision(make_device, "00000006")
    for topic, qos in (("$resource/temp", 2), ("other/topic", 1)):
        device = make_device()
        device.client.reconnect_delay_set(60, 60)
        assert device.connect("", token) == codec.ACCEPTED
        device.client.publish(topic, "1", qos=qos)
        assert device.closed.wait(5), topic
    refused = Event.objects.filter(summary__startswith="MQTT connection closed")
    wait_for(lambda: refused.count() == 2)
    assert "QoS 2" in refused.order_by("time")[0].summary


def test_gdc_mqtt_activate_publish_subscribe_and_certificate(
    mqtt_connector, gateway, tls_dir, tmp_path
):
    """Exosite's own client, unmodified: `gdc mqtt activate|publish|subscribe`, `-C/-K`."""
    device_services.whitelist_device(mqtt_connector, "00000007")
    host = f"{mqtt_connector.id}.localhost"
    ca = str(tls_dir / "ca.pem")
    base = [sys.executable, str(GDC), "-H", f"https://{host}", "-E", ca, "-P", str(gateway.port)]

    def gdc(*args):
        found = subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)
        assert found.returncode == 0, found.stderr
        return found.stdout.strip()

    token = gdc("mqtt", "activate", "-u", "00000007").splitlines()[-1]
    assert len(token) == 40 and token.isalnum()
    gdc("-k", token, "mqtt", "publish", "$resource/temp", "42")
    assert AliasValue.objects.get(alias="temp").reported == "42"
    batch = '[{"timestamp": 1700000000, "values": {"temp": 41}}]'
    gdc("-k", token, "mqtt", "publish", "$resource.batch", batch)
    assert DataPoint.objects.get(timestamp=1_700_000_000_000_000).value == "41"

    listener = subprocess.Popen(
        [*base, "-k", token, "mqtt", "subscribe", "--disconnect-after", "6"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        row = Device.objects.get(identity="00000007")
        wait_for(lambda: row.id in gateway.by_device, 15)
        device_services.set_state(row, {"setpoint": "25"})
        out, err = listener.communicate(timeout=30)
    finally:
        listener.kill()
    stamp = AliasValue.objects.get(device=row, alias="setpoint").timestamp
    assert f"setpoint.{stamp}=25" in out, err
    settle(gateway)

    mqtt_connector.auth_type = "certificate"
    mqtt_connector.presenter_identity = True
    mqtt_connector.save()
    cert, key = self_signed("00000008", tmp_path)
    gdc("-C", cert, "-K", key, "mqtt", "publish", "$resource/temp", "9")
    device = Device.objects.get(identity="00000008")
    assert device.cert_fingerprint
    assert AliasValue.objects.get(device=device, alias="temp").reported == "9"
    settle(gateway)


# --- Across server processes (PostgreSQL) ---------------------------------------------------


@pytest.fixture
def two_mqtt_processes(transactional_db, tls_dir, monkeypatch):
    """Two production servers (gunicorn) on the test database, each listening for MQTT on
    its own port with the local CA's certificate."""
    import os

    from django.conf import settings
    from django.db import connection

    from tests.conftest import free_port
    from tests.test_long_poll import ServerProcess

    if connection.vendor != "postgresql":
        pytest.skip("wake-ups across processes are PostgreSQL's: runs in its pass of the suite")
    monkeypatch.setattr(socket, "getaddrinfo", _resolve)
    params = connection.settings_dict
    url = f"postgres://{params['USER']}@{params['HOST']}:{params['PORT']}/{params['NAME']}"
    servers = []

    def start(port: int) -> ServerProcess:
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "DATA_DIR": str(settings.DATA_DIR),
            "MQTT_PORT": str(port),
            "MQTT_TLS_CERT": str(tls_dir / "server.pem"),
            "MQTT_TLS_KEY": str(tls_dir / "server.key"),
        }
        server = ServerProcess(None, env)
        server.mqtt_port = port
        server.restart = lambda: servers.append(start(port)) or servers[-1]
        return server

    servers += [start(free_port()), start(free_port())]
    yield servers
    for server in servers:
        if server.process.poll() is None:
            server.stop()


class ProcessGateway:
    """Where `Device_` connects: a server process's MQTT port."""

    def __init__(self, server):
        self.port, self.sessions, self.tasks = server.mqtt_port, (), ()


def mqtt_on(connector, tls_dir) -> None:
    connector.protocol_name = MQTT_PROTOCOL
    connector.save()
    tlsstack.server_certificate(tls_dir, [f"{connector.id}.localhost"])
    time.sleep(1.1)  # the servers look at the certificate files once a second


def provision_on(server, connector, identity: str, tls_dir) -> str:
    """Whitelist the identity and provision it for a token over MQTT on this server process."""
    device_services.whitelist_device(connector, identity)
    anonymous = Device_(connector, ProcessGateway(server), tls_dir)
    assert anonymous.connect() == codec.ACCEPTED
    anonymous.publish(f"$provision/{identity}", b"")
    token = anonymous.message()[1].decode()
    anonymous.client.disconnect()
    anonymous.client.loop_stop()
    return token


def test_a_device_reconnects_after_the_server_restarts(two_mqtt_processes, tls_dir):
    server = two_mqtt_processes[0]
    user = User.objects.create_user("maker@example.com", PASSWORD)
    connector = create_connector(user, "Restarts")
    define(connector, "temp")
    mqtt_on(connector, tls_dir)
    token = provision_on(server, connector, "dev-r", tls_dir)

    device = Device_(connector, ProcessGateway(server), tls_dir)
    device.client.reconnect_delay_set(1, 1)  # paho reconnects on its own, as firmware does
    assert device.connect("", token) == codec.ACCEPTED
    device.publish("$resource/temp", "1")
    server.process.terminate()
    assert server.process.wait(20) == 0
    assert device.closed.wait(10)
    restarted = server.restart()  # the same ports
    assert device.connacks.get(timeout=30) == codec.ACCEPTED
    device.publish("$resource/temp", "2")
    row = Device.objects.get(identity="dev-r")
    assert AliasValue.objects.get(device=row, alias="temp").reported == "2"
    wait_for(lambda: DeviceSession.objects.filter(device=row, connected_at__isnull=False).exists())
    device.client.disconnect()
    device.client.loop_stop()
    restarted.stop()


def test_cloud_set_reaches_a_session_on_another_process_and_sigterm_closes_cleanly(
    two_mqtt_processes, tls_dir
):
    first, second = two_mqtt_processes
    user = User.objects.create_user("maker@example.com", PASSWORD)
    connector = create_connector(user, "Two processes")
    define(connector, setpoint={"settable": True})
    mqtt_on(connector, tls_dir)
    token = provision_on(first, connector, "dev-1", tls_dir)

    device = Device_(connector, ProcessGateway(first), tls_dir)
    assert device.connect("", token) == codec.ACCEPTED
    row = Device.objects.get(identity="dev-1")
    wait_for(lambda: DeviceSession.objects.filter(device=row, connected_at__isnull=False).exists())
    started = time.monotonic()
    device_services.set_state(row, {"setpoint": "7"})  # from this, a third process
    topic, payload, _ = device.message()
    assert payload == b"7" and topic.startswith("$resource/setpoint/")
    assert time.monotonic() - started < 1.0

    # A newer connection of the device on the other process closes this one.
    device.client.reconnect_delay_set(60, 60)
    newer = Device_(connector, ProcessGateway(second), tls_dir)
    newer.client.reconnect_delay_set(60, 60)
    assert newer.connect("", token) == codec.ACCEPTED
    assert device.closed.wait(5)
    device.client.loop_stop()

    # SIGTERM: the session is ended cleanly, and the device is disconnected at once.
    second.process.terminate()
    assert newer.closed.wait(10)
    assert second.process.wait(20) == 0
    newer.client.loop_stop()
    session = DeviceSession.objects.get(device=row)
    assert session.connected_at is None and session.disconnected_at is not None
