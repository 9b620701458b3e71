"""Device events delivered to applications (issue #15, SPEC.md section 10): the transactional
outbox, the relay and signed webhooks, end to end against the production server (gunicorn,
its in-process relay) and a real receiver, on SQLite and PostgreSQL.

Receivers verify signatures with the published `standardwebhooks` library.
"""

import base64
import datetime as dt
import hashlib
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from django.db import transaction
from django.db.models import Max
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from connector import outbox, relay, webhooks
from connector.models import DeliveryCursor, OutboxEvent
from devices.models import Device, DeviceActivity
from tests.test_long_poll import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
EMAIL, PASSWORD = "events@example.com", "a long events passphrase"
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}


def admin_auth() -> str:
    return "Basic " + base64.b64encode(f"{EMAIL}:{PASSWORD}".encode()).decode()


class Receiver:
    """An HTTP receiver in the test: records every delivery; answers `status` (settable)."""

    def __init__(self):
        self.received: list[tuple[dict, bytes]] = []
        self.status = 204
        self.requests = 0
        self.delay = 0.0
        self.extra_headers: dict[str, str] = {}
        self.lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = owner.status
                owner.requests += 1
                time.sleep(owner.delay)
                if 200 <= status < 300:
                    with owner.lock:
                        owner.received.append((dict(self.headers.items()), body))
                self.send_response(status)
                for name, value in owner.extra_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict]:
        with self.lock:
            return [json.loads(body) for _headers, body in self.received]

    def wait_for(self, count: int, timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events()
            if len({e["id"] for e in found}) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{len(self.events())} events arrived, expected {count}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Line:
    """A connector on a running production server, driven over HTTP as a factory script,
    its devices and an application would."""

    def __init__(self, server, connector_id: str):
        self.server, self.id = server, connector_id
        self.host = f"{connector_id}.localhost"

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": admin_auth(), **kwargs.pop("headers", {})}
        return requests.request(
            method, f"{self.server.url}/api:1{path}", headers=headers, timeout=20, **kwargs
        )

    def subscribe(self, url: str, **fields) -> dict:
        body = {"webhook": {"url": url}, **fields}
        created = self.api("POST", f"/service/{self.id}/events/subscription", json=body)
        assert created.status_code == 201, created.text
        return created.json()

    def whitelist(self, identity: str) -> None:
        response = self.api("PUT", f"/service/{self.id}/device2/identity/{identity}", json={})
        assert response.status_code == 204, response.text

    def device(self, method: str, path: str, data="", **headers) -> requests.Response:
        return requests.request(
            method,
            f"{self.server.url}{path}",
            data=data,
            headers={"Host": self.host, **FORM, **headers},
            timeout=20,
        )

    def activate(self, identity: str) -> str:
        response = self.device("POST", "/provision/activate", f"id={identity}")
        assert response.status_code == 200, response.text
        return response.text

    def write(self, token: str, body: str) -> int:
        return self.device(
            "POST", "/onep:v1/stack/alias", body, **{"X-Exosite-CIK": token}
        ).status_code


def server_env(tmp_path) -> dict:
    from django.db import connection

    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {
        "DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "iotconnector.settings",
        "EVENTS_RELAY": "true",
        "EVENTS_POLL_INTERVAL": "0.05",
        "EVENTS_ALLOW_PRIVATE_URLS": "true",
        "EVENTS_TIMEOUT": "2",
    }
    if connection.vendor == "postgresql":
        params = connection.settings_dict
        env["DATABASE_URL"] = (
            f"postgres://{params['USER']}@{params['HOST']}:{params['PORT']}/{params['NAME']}"
        )
    return env


SEED = """
import json, django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from connector.models import User
from connector.services import create_connector
from devices.resources import check_definitions
connector = create_connector(User.objects.create_user({email!r}, {password!r}), "Events")
connector.devmode = True
connector.resources = check_definitions(
    {{"temp": {{"format": "number"}}, "setpoint": {{"format": "number", "settable": True}}}}
)
connector.resources_version += 1
connector.save()
print(json.dumps({{"connector": connector.id}}))
"""


@pytest.fixture
def line(tmp_path, transactional_db):
    yield from start_line(tmp_path)


@pytest.fixture
def impatient_line(tmp_path, transactional_db):
    """A server that gives up on a failing event after one second."""
    yield from start_line(tmp_path, EVENTS_RETRY_SECONDS="1")


def start_line(tmp_path, **extra):
    env = server_env(tmp_path) | extra
    seed = SEED.format(email=EMAIL, password=PASSWORD)
    out = subprocess.run(
        [sys.executable, "-c", seed], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    connector_id = json.loads(out.stdout.strip().splitlines()[-1])["connector"]
    server = ServerProcess(env.get("DATABASE_URL"), env)
    yield Line(server, connector_id), env
    server.stop()


@pytest.fixture
def receiver():
    found = Receiver()
    yield found
    found.close()


def test_the_tutorial_flow_arrives_signed_in_murano_shape(line, receiver):
    line, _env = line
    created = line.subscribe(receiver.url)
    assert created["secret"].startswith("whsec_") and created["id"].startswith("sub_")
    line.whitelist("00000001")
    token = line.activate("00000001")
    assert line.write(token, "temp=21.5&undefined_alias=x") == 204
    set_value = line.api(
        "PATCH", f"/service/{line.id}/device2/identity/00000001/state", json={"setpoint": 19}
    )
    assert set_value.status_code == 204
    assert line.api("DELETE", f"/service/{line.id}/device2/identity/00000001").status_code == 205
    found = receiver.wait_for(4)
    assert [e["type"] for e in found] == ["provisioned", "data_in", "data_out", "deleted"]
    provisioned, data_in, data_out, deleted = found
    assert set(data_in) == {
        "id",
        "type",
        "connector",
        "identity",
        "ip",
        "protocol",
        "timestamp",
        "connection_id",
        "payload",
    }
    assert data_in["connector"] == line.id and data_in["identity"] == "00000001"
    assert data_in["protocol"] == "http" and data_in["ip"] == "127.0.0.1"
    assert data_in["connection_id"] is None
    # Every alias as the device sent it, defined or not (SPEC.md section 10).
    assert data_in["payload"] == [
        {"timestamp": data_in["timestamp"], "values": {"temp": "21.5", "undefined_alias": "x"}}
    ]
    assert data_out["payload"][0]["values"] == {"setpoint": "19"}
    assert provisioned["payload"] == [] and deleted["payload"] == []
    assert len({e["id"] for e in found}) == 4
    # Each delivery verifies with the receiver's library; a tampered body does not.
    hook = Webhook(created["secret"])
    for headers, body in receiver.received:
        lower = {k.lower(): v for k, v in headers.items()}
        assert hook.verify(body, lower)["id"] == lower["webhook-id"]
    headers, body = receiver.received[1]
    with pytest.raises(WebhookVerificationError):
        hook.verify(body.replace(b"21.5", b"99.9"), {k.lower(): v for k, v in headers.items()})


@pytest.fixture
def sleepy_line(tmp_path, transactional_db):
    """A server whose relay process would look at the outbox only every 30 s on its own."""
    yield from start_line(tmp_path, EVENTS_POLL_INTERVAL="30")


def relay_listening(data_dir) -> bool:
    """Whether a relay process has bound the wake-up socket of this DATA_DIR."""
    from pathlib import Path

    tag = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
    return f"@iot-relay-{tag}" in Path("/proc/net/unix").read_text()


def test_a_commit_in_a_worker_wakes_the_relay_process(sleepy_line, receiver, tmp_path):
    line, _env = sleepy_line
    deadline = time.monotonic() + 30
    while not relay_listening(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    line.subscribe(receiver.url)
    line.whitelist("00000001")
    token = line.activate("00000001")  # a claim (one statement on PostgreSQL) wakes it
    receiver.wait_for(1, timeout=5)
    for n in range(3):  # and so does each write, well before the 30 s poll
        assert line.write(token, f"temp={n}") == 204
        found = receiver.wait_for(2 + n, timeout=5)
    assert [e["type"] for e in found] == ["provisioned", "data_in", "data_in", "data_in"]


def test_a_receiver_down_for_a_while_gets_everything_in_order_per_device(line, receiver):
    line, _env = line
    line.subscribe(receiver.url, types=["data_in"])
    tokens = {}
    for n in range(3):
        identity = f"dev-{n}"
        line.whitelist(identity)
        tokens[identity] = line.activate(identity)
    receiver.status = 503
    receiver.extra_headers = {"Retry-After": "1"}
    for step in range(10):
        for token in tokens.values():
            assert line.write(token, f"temp={step}") == 204
    time.sleep(1.5)  # the relay is retrying, backing off
    assert receiver.events() == []
    receiver.status = 204
    found = receiver.wait_for(30, timeout=60)
    for identity in tokens:
        values = [e["payload"][0]["values"]["temp"] for e in found if e["identity"] == identity]
        assert values == [str(step) for step in range(10)], identity
    health = line.api("GET", f"/service/{line.id}/events/subscription").json()[0]["health"]
    assert health["delivered"] >= 30 and health["backlog"] == 0 and health["per_minute"] == 30
    summary = line.api("GET", f"/service/{line.id}/device2").json()["events"]
    assert summary == {"types": ["data_in"], "subscriptions": 1}
    assert "503" in (health["last_error"] or "")


def test_batched_deliveries_are_signed_arrays_in_order(line, receiver):
    line, _env = line
    created = line.subscribe(receiver.url, types=["data_in"], batch=10)
    line.whitelist("dev-b")
    token = line.activate("dev-b")
    receiver.status = 503
    for n in range(25):
        assert line.write(token, f"temp={n}") == 204
    time.sleep(0.5)
    receiver.status = 204
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with receiver.lock:
            bodies = [json.loads(body) for _headers, body in receiver.received]
        if sum(len(b) for b in bodies) >= 25:
            break
        time.sleep(0.05)
    assert all(isinstance(b, list) and 1 <= len(b) <= 10 for b in bodies)
    values = [e["payload"][0]["values"]["temp"] for b in bodies for e in b]
    assert values == [str(n) for n in range(25)]
    hook = Webhook(created["secret"])
    for headers, body in receiver.received:
        lower = {k.lower(): v for k, v in headers.items()}
        assert lower["webhook-id"].startswith("batch_")
        hook.verify(body, lower)


def test_kill_9_of_the_server_mid_stream_loses_no_acknowledged_event(line, receiver, tmp_path):
    line, env = line
    line.subscribe(receiver.url, types=["data_in"])
    line.whitelist("dev-k")
    token = line.activate("dev-k")
    receiver.status = 503  # nothing is delivered yet: everything is in the outbox
    acknowledged = [n for n in range(40) if line.write(token, f"temp={n}") == 204]
    assert len(acknowledged) == 40
    os.kill(line.server.process.pid, signal.SIGKILL)
    for pid in _children(line.server.process.pid):
        os.kill(pid, signal.SIGKILL)
    line.server.process.wait(10)
    time.sleep(0.5)
    receiver.status = 204
    restarted = ServerProcess(env.get("DATABASE_URL"), env)
    try:
        found = receiver.wait_for(40, timeout=60)
    finally:
        restarted.stop()
    values = [e["payload"][0]["values"]["temp"] for e in found]
    first_seen = list(dict.fromkeys(values))
    assert first_seen == [str(n) for n in acknowledged]  # all of them, in order
    by_id = {}
    for event in found:  # a duplicate is the same event under the same id
        assert by_id.setdefault(event["id"], event) == event


def test_kill_9_of_the_relay_mid_delivery_loses_nothing_and_repeats_under_the_same_ids(
    line, receiver
):
    """The relay process dies while delivering: the server starts another, which waits out
    the dead one's leases and goes on from the last cursor saved; duplicates share ids."""
    line, _env = line
    line.subscribe(receiver.url, types=["data_in"])
    tokens = {}
    for identity in ("dev-x", "dev-y"):
        line.whitelist(identity)
        tokens[identity] = line.activate(identity)
    receiver.delay = 0.02
    for n in range(30):
        for token in tokens.values():
            assert line.write(token, f"temp={n}") == 204
    receiver.wait_for(5)
    (relay_pid,) = [
        pid
        for pid in _children(line.server.process.pid)
        if b"relay_events" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    os.kill(relay_pid, signal.SIGKILL)
    receiver.delay = 0
    found = receiver.wait_for(60, timeout=60)
    for identity in tokens:
        values = [e["payload"][0]["values"]["temp"] for e in found if e["identity"] == identity]
        assert list(dict.fromkeys(values)) == [str(n) for n in range(30)]  # all, in order
    by_id = {}
    for event in found:
        assert by_id.setdefault(event["id"], event) == event


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_dead_letter_is_listed_with_the_last_answer_and_replayed_under_its_id(
    impatient_line, receiver
):
    line, _env = impatient_line
    created = line.subscribe(receiver.url, types=["provisioned"])
    base = f"/service/{line.id}/events/subscription/{created['id']}"
    receiver.status = 500
    line.whitelist("dev-d")
    line.activate("dev-d")
    deadline, dead = time.monotonic() + 20, []
    while time.monotonic() < deadline and not dead:
        dead = line.api("GET", f"{base}/deliveries?status=dead").json()["dead"]
        time.sleep(0.1)
    assert len(dead) == 1, "the event was not dead-lettered"
    letter = dead[0]
    assert letter["events"][0]["type"] == "provisioned" and letter["last_status"] == 500
    assert letter["last_response"] == "ok" and letter["attempts"] >= 1
    assert line.api("GET", f"{base}/deliveries?status=bogus").status_code == 400
    assert line.api("POST", f"{base}/replay", json={"ids": "all"}).status_code == 400
    receiver.status = 204
    replay = line.api("POST", f"{base}/replay", json={"ids": [letter["id"]]})
    assert replay.status_code == 202 and replay.json() == {"replaying": 1}
    (event,) = receiver.wait_for(1)
    assert event["id"] == letter["events"][0]["id"]  # the same event, under the same id
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done = line.api("GET", f"{base}/deliveries?status=dead").json()["dead"][0]
        if done["replayed"]:
            break
        time.sleep(0.1)
    assert done["replayed"]


def test_events_since_a_time_are_delivered_again_in_order_under_their_ids(line, receiver):
    line, _env = line
    created = line.subscribe(receiver.url, types=["data_in"])
    base = f"/service/{line.id}/events/subscription/{created['id']}"
    tokens = {}
    for identity in ("dev-a", "dev-b"):
        line.whitelist(identity)
        tokens[identity] = line.activate(identity)
    for n in range(4):
        for token in tokens.values():
            assert line.write(token, f"temp={n}") == 204
    first = receiver.wait_for(8)
    since = sorted(e["timestamp"] for e in first)[4]  # the third round of writes on
    again = line.api("POST", f"{base}/redeliver", json={"since": since})
    assert again.status_code == 202 and again.json()["owed"] == 4
    assert again.json()["oldest"] <= min(e["timestamp"] for e in first)
    deadline = time.monotonic() + 20
    while len(receiver.events()) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    repeated = receiver.events()[8:]
    assert sorted(e["id"] for e in repeated) == sorted(
        e["id"] for e in first if e["timestamp"] >= since
    )  # the same events, under the same ids, nothing older
    for identity in tokens:  # and each device's in order again
        values = [e["payload"][0]["values"]["temp"] for e in repeated if e["identity"] == identity]
        assert values == ["2", "3"]
    # The rewind is logged with its actor; a bad time is a 400 that moves nothing.
    logged = line.api("GET", f"/service/{line.id}/logs?type=settings_changed").json()["events"]
    assert "delivered again (4 owed)" in logged[0]["summary"]
    for bad in ({"since": "yesterday"}, {"since": -1}, {"since": True}, {"until": 1}, []):
        answer = line.api("POST", f"{base}/redeliver", json=bad)
        assert answer.status_code == 400 and "since" in answer.json(), bad
    time.sleep(0.3)
    assert len(receiver.events()) == 12


def test_410_gone_disables_the_subscription(line, receiver):
    line, _env = line
    created = line.subscribe(receiver.url)
    receiver.status = 410
    line.whitelist("dev-g")
    line.activate("dev-g")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = line.api("GET", f"/service/{line.id}/events/subscription/{created['id']}").json()
        if not found["enabled"]:
            break
        time.sleep(0.1)
    assert found["enabled"] is False and "410" in found["disabled_reason"]


def test_the_test_event_reports_what_the_receiver_answered(line, receiver):
    line, _env = line
    created = line.subscribe(receiver.url)
    sent = line.api("POST", f"/service/{line.id}/events/subscription/{created['id']}/test")
    assert sent.status_code == 200 and sent.json()["delivered"] is True
    assert receiver.events()[0]["type"] == "test"
    receiver.status = 500
    failed = line.api("POST", f"/service/{line.id}/events/subscription/{created['id']}/test")
    assert failed.json() == {**failed.json(), "delivered": False, "status": 500}


def test_the_secret_is_shown_once_and_rotation_signs_with_both(line, receiver):
    line, _env = line
    created = line.subscribe(
        receiver.url, webhook={"url": receiver.url, "headers": {"X-Key": "key-value-1"}}
    )
    shown = line.api("GET", f"/service/{line.id}/events/subscription/{created['id']}").json()
    assert "whsec_" not in json.dumps(shown) and "key-value-1" not in json.dumps(shown)
    assert shown["webhook"]["headers"] == ["X-Key"]
    rotated = line.api("POST", f"/service/{line.id}/events/subscription/{created['id']}/rotate")
    new_secret = rotated.json()["secret"]
    assert new_secret != created["secret"]
    line.api("POST", f"/service/{line.id}/events/subscription/{created['id']}/test")
    headers, body = receiver.received[-1]
    lower = {k.lower(): v for k, v in headers.items()}
    assert lower["x-key"] == "key-value-1"
    assert len(lower["webhook-signature"].split(" ")) == 2
    for secret in (created["secret"], new_secret):  # receivers on either secret verify
        Webhook(secret).verify(body, lower)


# --- The broker sink: RabbitMQ ---------------------------------------------------------------


@pytest.fixture
def rabbit():
    """A queue on the machine's RabbitMQ bound to the test's exchange (everything routed)."""
    import uuid

    import pika
    from pika.exceptions import AMQPError

    from tests.conftest import require

    try:
        connection = pika.BlockingConnection(
            pika.ConnectionParameters("127.0.0.1", 5672, connection_attempts=1, socket_timeout=3)
        )
    except AMQPError:
        require(False, "RabbitMQ on 127.0.0.1:5672 (apt install rabbitmq-server)")
    channel = connection.channel()
    exchange = f"iot-test-{uuid.uuid4().hex[:8]}"
    channel.exchange_declare(exchange, "topic", durable=True)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, exchange, routing_key="#")
    yield channel, exchange, queue
    try:
        channel.exchange_delete(exchange)
        connection.close()
    except AMQPError:  # the broker was restarted by the test: clean up on a new connection
        connection, channel = rabbit_channel()
        channel.exchange_delete(exchange)
        connection.close()


def consume(channel, queue, count: int, timeout: float = 30) -> list:
    found, deadline = [], time.monotonic() + timeout
    while len({m[0].message_id for m in found}) < count and time.monotonic() < deadline:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        found.append((properties, method.routing_key, json.loads(body)))
    return found


def test_a_broker_subscription_publishes_the_same_events_confirmed_and_routed(line, rabbit):
    line, _env = line
    channel, exchange, queue = rabbit
    created = line.api(
        "POST",
        f"/service/{line.id}/events/subscription",
        json={
            "amqp": {
                "url": "amqp://guest:guest@127.0.0.1:5672/%2F",
                "exchange": exchange,
                "routing_key": "{connector}.{type}.{identity}",
            }
        },
    )
    assert created.status_code == 201, created.text
    listed = line.api("GET", f"/service/{line.id}/events/subscription").json()[0]
    assert listed["amqp"]["url"] == "amqp://guest@127.0.0.1:5672/%2F"  # no password shown
    assert listed["webhook"] is None and "guest:guest" not in json.dumps(listed)
    line.whitelist("dev-r")
    token = line.activate("dev-r")
    for n in range(5):
        assert line.write(token, f"temp={n}") == 204
    messages = consume(channel, queue, 6)
    events = [body for _properties, _key, body in messages]
    assert [e["type"] for e in events] == ["provisioned"] + ["data_in"] * 5
    assert [e["payload"][0]["values"]["temp"] for e in events[1:]] == [str(n) for n in range(5)]
    properties, key, first = messages[0]
    assert key == f"{line.id}.provisioned.dev-r"
    assert properties.message_id == first["id"] and properties.delivery_mode == 2
    assert properties.content_type == "application/json"


def test_events_no_queue_takes_yet_are_retried_not_lost(line, rabbit):
    """Publishes are mandatory: with no queue bound the broker refuses them, the relay backs
    off and retries, and once a consumer binds, everything arrives in order."""
    line, _env = line
    channel, exchange, queue = rabbit
    channel.queue_unbind(queue, exchange, routing_key="#")
    line.api(
        "POST",
        f"/service/{line.id}/events/subscription",
        json={"types": ["data_in"], "amqp": {"url": "amqp://127.0.0.1/", "exchange": exchange}},
    )
    line.whitelist("dev-u")
    token = line.activate("dev-u")
    for n in range(3):
        assert line.write(token, f"temp={n}") == 204
    time.sleep(1.0)
    assert channel.basic_get(queue, auto_ack=True)[0] is None  # nothing, and nothing dropped
    channel.queue_bind(queue, exchange, routing_key="#")
    events = [body for _p, _k, body in consume(channel, queue, 3)]
    assert [e["payload"][0]["values"]["temp"] for e in events] == ["0", "1", "2"]


def test_a_broker_destination_is_checked(api, connector, settings):
    url = f"/api:1/service/{connector.id}/events/subscription"
    bad = [
        ({"amqp": {"url": "http://x"}}, "amqp.url"),
        ({"amqp": {"url": "amqp://h", "exchange": "amq.topic"}}, "amqp.exchange"),
        ({"amqp": {"url": "amqp://h", "routing_key": "{secret}"}}, "amqp.routing_key"),
        ({"amqp": {"url": "amqp://h"}, "webhook": {"url": "https://x.example"}}, "amqp"),
    ]
    for body, field in bad:
        response = api.post(url, body, format="json")
        assert response.status_code == 400 and field in response.json(), (body, response.json())
    settings.EVENTS_ALLOW_PRIVATE_URLS = False
    private = api.post(url, {"amqp": {"url": "amqps://u:p@10.0.0.5/"}}, format="json")
    assert private.status_code == 400 and "private" in private.json()["amqp.url"]


# --- In the test process: the outbox and the destination rules -----------------------------


def test_a_webhook_to_a_private_address_is_refused_unless_allowed(settings):
    settings.EVENTS_ALLOW_PRIVATE_URLS = False
    for url in [
        "https://127.0.0.1/x",
        "https://10.1.2.3/x",
        "https://169.254.169.254/latest",
        "https://[::1]/x",
        "https://[::ffff:127.0.0.1]/x",
        "http://example.com/x",
        "https://user:pw@example.com/x",
        "ftp://example.com/x",
    ]:
        assert webhooks.url_error(url), url
    assert webhooks.url_error("https://example.com/hooks") is None
    # After DNS resolution: a name that resolves to loopback is refused at delivery.
    with pytest.raises(webhooks.DeliveryError, match="private, loopback"):
        webhooks.post("https://localhost:9/x", b"{}", {})
    settings.EVENTS_ALLOW_PRIVATE_URLS = True
    assert webhooks.url_error("http://127.0.0.1:9/x") is None


def test_a_private_url_is_a_400_from_the_api(api, connector, settings):
    settings.EVENTS_ALLOW_PRIVATE_URLS = False
    response = api.post(
        f"/api:1/service/{connector.id}/events/subscription",
        {"webhook": {"url": "https://192.168.1.10/hook"}},
        format="json",
    )
    assert response.status_code == 400 and "private" in response.json()["webhook.url"]


def test_the_signature_is_standard_webhooks():
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    body = b'{"a": 1}'
    signature = webhooks.sign(secret, "evt_1", 1_700_000_000, body)
    moment = dt.datetime.fromtimestamp(1_700_000_000, tz=dt.UTC)
    expected = Webhook(secret).sign("evt_1", moment, body.decode())
    assert signature == expected


def test_backoff_grows_with_jitter_and_honours_retry_after():
    waits = [relay.backoff_s(n) for n in range(1, 15)]
    assert all(
        0.5 * min(2 ** (n - 1), 3600) <= w <= 1.5 * min(2 ** (n - 1), 3600)
        for n, w in zip(range(1, 15), waits, strict=True)
    )
    assert relay.backoff_s(1, retry_after=120) >= 120
    assert relay.backoff_s(1, retry_after=10**9) <= 86400


def test_a_write_batch_that_rolls_back_leaves_no_outbox_row(transactional_db, connector):
    """The outbox row is written in the write's own transaction: stored writes add one each,
    a batch that fails adds none (tests/test_store.py's failing batch)."""
    from devices import services as device_services
    from provisioning import services, store
    from provisioning.connectors import load
    from tests.conftest import define

    define(connector, "temp")
    connector.events_enabled = True
    connector.save(update_fields=["events_enabled"])
    device_services.whitelist_device(connector, "o-1")
    token = services.activate_device(connector, "o-1", None, "127.0.0.1", secure=True).body
    assert list(OutboxEvent.objects.values_list("type", flat=True)) == ["provisioned"]
    entry, _failures = load(connector.pk, "127.0.0.1")
    job = services.token_write(entry, token, [("temp", "5")], "127.0.0.1", secure=True).job
    assert store.execute([job]) == [store.STORED]
    stored = OutboxEvent.objects.filter(type="data_in").get()
    assert json.loads(stored.payload)[0]["values"] == {"temp": "5"}
    device_id = Device.objects.get(identity="o-1").pk
    assert stored.partition == outbox.partition_of(device_id)  # one device, one partition
    device_services.whitelist_device(connector, "o-2")
    other = services.activate_device(connector, "o-2", None, "127.0.0.1", secure=True).body
    DeviceActivity.objects.filter(device__identity="o-2").delete()  # never seen, so far
    before = OutboxEvent.objects.count()
    good = services.token_write(entry, token, [("temp", "6")], "127.0.0.1", secure=True).job
    broken = services.token_write(entry, other, [("temp", "7")], "127.0.0.1", secure=True).job
    broken.now = None  # a value without a timestamp: the whole batch fails and rolls back
    assert store.execute([good, broken]) == [store.UNSTORED, store.UNSTORED]
    assert OutboxEvent.objects.count() == before


def test_no_outbox_row_without_an_enabled_subscription(transactional_db, connector):
    from devices import services as device_services
    from provisioning import services

    device_services.whitelist_device(connector, "q-1")
    assert services.activate_device(connector, "q-1", None, "127.0.0.1", secure=True).status == 200
    assert not OutboxEvent.objects.exists()


def test_redeliver_events_command_rewinds_and_refuses_what_it_cannot(transactional_db, connector):
    from django.core.management import CommandError, call_command

    from connector import subscriptions

    subscription, _secret = subscriptions.create(
        connector, {"webhook": {"url": "http://127.0.0.1:9/x"}}
    )
    device = Device.objects.create(connector=connector, identity="dev-c")
    with transaction.atomic():
        outbox.add(
            [
                outbox.row(connector.id, "data_in", device.id, "dev-c", None, 1000 + n)
                for n in range(3)
            ]
        )
    DeliveryCursor.objects.filter(subscription=subscription).update(
        last_id=OutboxEvent.objects.aggregate(m=Max("id"))["m"]
    )
    out = io.StringIO()
    call_command("redeliver_events", subscription.id, "--since", "1001", stdout=out)
    assert "2 events will be delivered again" in out.getvalue()
    cursor = DeliveryCursor.objects.get(
        subscription=subscription, partition=outbox.partition_of(device.id)
    )
    assert cursor.last_id == OutboxEvent.objects.get(time=1000).id
    with pytest.raises(CommandError, match="No subscription"):
        call_command("redeliver_events", "sub_nope", "--since", "1")
    with pytest.raises(CommandError, match="--since"):
        call_command("redeliver_events", subscription.id, "--since", "soon")


def rabbit_channel():
    import pika

    connection = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", 5672, connection_attempts=20, retry_delay=0.5)
    )
    return connection, connection.channel()


def rabbitmqctl(*args: str) -> None:
    from tests.conftest import require

    try:
        done = subprocess.run(["rabbitmqctl", *args], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        done = None
    require(done is not None and done.returncode == 0, "rabbitmqctl (root on the broker host)")


def test_a_broker_restart_loses_nothing(line, rabbit):
    """RabbitMQ stops (every connection dropped) while devices keep writing: the writes are
    acknowledged, the relay's publishes fail and back off, and once the broker is back
    every event arrives, in order, into a durable queue that outlived the restart."""
    import uuid

    line, _env = line
    channel, exchange, _queue = rabbit
    durable = f"iot-test-durable-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(durable, durable=True)
    channel.queue_bind(durable, exchange, routing_key="#")
    line.api(
        "POST",
        f"/service/{line.id}/events/subscription",
        json={"types": ["data_in"], "amqp": {"url": "amqp://127.0.0.1/", "exchange": exchange}},
    )
    line.whitelist("dev-s")
    token = line.activate("dev-s")
    assert line.write(token, "temp=0") == 204
    assert len(consume(channel, durable, 1)) == 1
    rabbitmqctl("stop_app")
    try:
        for n in range(1, 6):
            assert line.write(token, f"temp={n}") == 204  # the device API does not wait
        time.sleep(2)  # the relay tries, fails, backs off
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    connection, channel = rabbit_channel()
    try:
        events = [body for _p, _k, body in consume(channel, durable, 5, timeout=60)]
        assert [e["payload"][0]["values"]["temp"] for e in events] == ["1", "2", "3", "4", "5"]
        channel.queue_delete(durable)
    finally:
        connection.close()


def test_a_long_outage_dead_letters_expired_events_without_a_request_each(
    transactional_db, connector, receiver, settings
):
    """Each event is retried for EVENTS_RETRY_SECONDS from its commit. When the receiver
    has been failing past that, the head event is dead-lettered after its last attempt and
    the expired events behind it follow unsent: the undelivered outbox stays bounded by the
    retry period, and a week-long outage costs no request per event."""
    from connector import subscriptions
    from connector.models import DeadLetter, now_us

    settings.EVENTS_RETRY_SECONDS = 3 * 86400
    subscription, _secret = subscriptions.create(connector, {"webhook": {"url": receiver.url}})
    device = Device.objects.create(connector=connector, identity="dev-o")
    four_days_ago = now_us() - 4 * 86400 * 1_000_000
    fresh = now_us()
    with transaction.atomic():
        outbox.add(
            [
                outbox.row(connector.id, "data_in", device.id, "dev-o", None, four_days_ago + n)
                for n in range(5)
            ]
            + [outbox.row(connector.id, "data_in", device.id, "dev-o", None, fresh)]
        )
    receiver.status = 503
    worker = relay.Relay()
    for _ in range(10):
        worker.step()
    dead = list(DeadLetter.objects.order_by("event_id"))
    assert len(dead) == 5 and receiver.requests == 2  # the head, then the fresh one
    assert dead[0].last_status == 503 and dead[0].attempts == 1
    assert [d.last_error for d in dead[1:]] == ["not sent: expired"] * 4
    # The fresh event is owed still: retried with backoff, not dead-lettered.
    cursor = DeliveryCursor.objects.get(
        subscription=subscription, partition=outbox.partition_of(device.id)
    )
    assert cursor.last_id == dead[-1].event_id and cursor.attempts == 1
    assert cursor.next_attempt_at > now_us()
    receiver.status = 204
    DeliveryCursor.objects.filter(pk=cursor.pk).update(next_attempt_at=0)
    worker.step()
    assert [e["timestamp"] for e in receiver.events()] == [fresh]


def test_closed_activation_windows_are_announced_once_as_expired_events(
    db, connector, bobs_connector, receiver
):
    """Whitelisted devices whose deadline passes without provisioning give an `expired`
    event (Logs tab; and the outbox where events are delivered), once each, from the first
    look on; provisioned and locked devices do not."""
    from connector import subscriptions
    from connector.models import Event, EventType, now_us
    from devices.services import announce_expired, whitelist_device

    subscriptions.create(connector, {"webhook": {"url": receiver.url}, "types": ["expired"]})
    start = now_us()
    assert announce_expired(start) == 0  # the first look only sets the mark
    second = 1_000_000
    for identity, offset in [("a", 10), ("b", 20), ("gone", 12), ("held", 15), ("later", 100)]:
        whitelist_device(connector, identity, expire=start + offset * second)
    whitelist_device(bobs_connector, "bobs", expire=start + 18 * second)  # no subscription
    Device.objects.filter(identity="gone").update(state="provisioned")
    Device.objects.filter(identity="held").update(locked=True)
    assert announce_expired(start + 25 * second) == 3
    assert announce_expired(start + 25 * second) == 0  # once
    rows = OutboxEvent.objects.order_by("time")
    assert [(r.identity, r.type, r.time) for r in rows] == [
        ("a", "expired", start + 10 * second),
        ("b", "expired", start + 20 * second),
    ]  # bob's connector delivers no events
    assert outbox.event_json(rows[0])["payload"] == []
    logged = Event.objects.filter(type=EventType.EXPIRED).order_by("identity")
    assert [e.identity for e in logged] == ["a", "b", "bobs"]
    assert logged[0].summary == "Activation window closed without provisioning"
    assert announce_expired(start + 200 * second) == 1  # "later" in its turn
    assert OutboxEvent.objects.filter(identity="later").count() == 1
