"""Long polls (SPEC.md section 3) against the real server stack (uvicorn + the front)."""

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import requests
from django.utils.http import http_date

from connector.models import User
from connector.services import create_connector
from devices import services as device_services
from devices.models import Device
from provisioning import longpoll
from provisioning.wire import WireError
from tests.conftest import PASSWORD, define, free_port
from tests.device_client import DeviceClient

# --- Headers (pure) ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "", " ", "١٢"])
def test_bad_request_timeout_is_refused(value):
    with pytest.raises(WireError) as error:
        longpoll.parse_timeout(value)
    assert error.value.status == 400 and "Request-Timeout" in error.value.reason


def test_request_timeout_is_clamped_to_five_minutes():
    assert longpoll.parse_timeout("0") == 0
    assert longpoll.parse_timeout(" 1500 ") == 1500
    assert longpoll.parse_timeout("300001") == 300_000
    assert longpoll.parse_timeout("9" * 40) == 300_000


def test_if_modified_since_unix_seconds_or_http_date():
    assert longpoll.parse_since(None) is None
    assert longpoll.parse_since("1700000000") == 1_700_000_000
    assert longpoll.parse_since(http_date(1_700_000_000)) == 1_700_000_000
    for bad in ("yesterday", "-5", "1e9", "Sun, 99 Foo 2023 00:00:00 GMT"):
        with pytest.raises(WireError):
            longpoll.parse_since(bad)


def test_newer_is_compared_to_the_second_with_if_modified_since():
    # Polling again with the Last-Modified (a whole second) does not return the same value.
    assert not longpoll.is_newer(1_700_000_000_900_000, 1_700_000_000, 0)
    assert longpoll.is_newer(1_700_000_001_000_000, 1_700_000_000, 0)
    # Without the header, anything stored after the poll arrived answers it.
    assert longpoll.is_newer(1_700_000_000_000_001, None, 1_700_000_000_000_000)
    assert not longpoll.is_newer(1_700_000_000_000_000, None, 1_700_000_000_000_000)


# --- Live server ------------------------------------------------------------------------------


class Device_:
    def __init__(self, server, connector, token):
        self.base = server.url
        self.host = f"{connector.id}.localhost"
        self.token = token
        self.connector = connector

    def headers(self, **extra):
        return {"Host": self.host, "X-Exosite-CIK": self.token, **extra}

    def poll(self, alias, timeout_ms, since=None, **kwargs):
        headers = self.headers(**{"Request-Timeout": str(timeout_ms)})
        if since is not None:
            headers["If-Modified-Since"] = str(since)
        url = f"{self.base}/onep:v1/stack/alias?{alias}"
        return requests.get(url, headers=headers, timeout=30, **kwargs)

    def write(self, body):
        return requests.post(
            f"{self.base}/onep:v1/stack/alias",
            data=body,
            headers=self.headers(**{"Content-Type": "application/x-www-form-urlencoded"}),
            timeout=10,
        )


def post_activate(server, connector, identity: str) -> requests.Response:
    return requests.post(
        f"{server.url}/provision/activate",
        data=f"id={identity}",
        headers={
            "Host": f"{connector.id}.localhost",
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        },
        timeout=10,
    )


def activated(server, connector, identity="00000001") -> Device_:
    device_services.whitelist_device(connector, identity)
    response = post_activate(server, connector, identity)
    assert response.status_code == 200, response.text
    return Device_(server, connector, response.text)


def devmode_connector_for_tests(name: str):
    """A maker's connector in developer mode (plain HTTP on loopback), `temp` and a settable
    `setpoint` defined."""
    user = User.objects.create_user("maker@example.com", PASSWORD)
    connector = create_connector(user, name)
    connector.devmode = True
    connector.save()
    define(connector, "temp", setpoint={"format": "number", "settable": True})
    return connector


@pytest.fixture
def device(live_server, transactional_db):
    return activated(live_server, devmode_connector_for_tests("Poll line"))


def wait_for_waiters(count: int) -> None:
    """Until `count` polls wait in the server's event loop (the test server runs in-process)."""
    for _ in range(400):
        if len(longpoll.hub) == count:
            return
        time.sleep(0.01)
    raise AssertionError(f"{len(longpoll.hub)} polls waiting, expected {count}")


def test_poll_times_out_with_304_after_the_requested_time(device):
    started = time.monotonic()
    response = device.poll("temp", 400)
    elapsed = time.monotonic() - started
    assert response.status_code == 304
    assert response.text == ""
    assert 0.4 <= elapsed < 5
    assert len(longpoll.hub) == 0


def test_a_device_write_wakes_the_poll(device):
    with ThreadPoolExecutor(1) as pool:
        polling = pool.submit(device.poll, "temp", 20_000)
        wait_for_waiters(1)
        assert device.write("temp=21.5").status_code == 204
        response = polling.result(timeout=10)
    assert response.status_code == 200
    assert response.text == "temp=21.5"
    last_modified = response.headers["Last-Modified"]
    assert abs(longpoll.parse_since(last_modified) - time.time()) < 5
    assert len(longpoll.hub) == 0


def test_a_cloud_set_wakes_the_poll_on_a_settable_alias(device):
    with ThreadPoolExecutor(1) as pool:
        polling = pool.submit(device.poll, "setpoint", 20_000)
        wait_for_waiters(1)
        identity = Device.objects.get(connector=device.connector)
        device_services.set_state(identity, {"setpoint": 19})
        response = polling.result(timeout=10)
    assert (response.status_code, response.text) == (200, "setpoint=19")


def test_a_write_to_another_alias_or_device_does_not_answer_the_poll(device, live_server):
    other = activated(live_server, device.connector, "00000002")
    with ThreadPoolExecutor(1) as pool:
        polling = pool.submit(device.poll, "setpoint", 1_500)
        wait_for_waiters(1)
        assert device.write("temp=1").status_code == 204
        assert other.write("setpoint=5").status_code == 204
        response = polling.result(timeout=10)
    assert response.status_code == 304


def test_a_value_already_newer_than_if_modified_since_answers_at_once(device):
    assert device.write("temp=7").status_code == 204
    started = time.monotonic()
    response = device.poll("temp", 60_000, since=int(time.time()) - 60)
    assert time.monotonic() - started < 10  # not the minute asked for
    assert (response.status_code, response.text) == (200, "temp=7")
    # Polling again with its Last-Modified waits for a newer value (here: runs out).
    again = device.poll("temp", 300, since=response.headers["Last-Modified"])
    assert again.status_code == 304


def test_a_huge_request_timeout_is_accepted_and_clamped(device):
    assert device.write("temp=3").status_code == 204
    response = device.poll("temp", 10**12, since=0)
    assert (response.status_code, response.text) == (200, "temp=3")


@pytest.mark.parametrize("value", ["-5", "soon", "12.5"])
def test_bad_request_timeout_is_a_400_over_http(device, value):
    response = device.poll("temp", value)
    assert response.status_code == 400
    assert "Request-Timeout" in response.text


def test_bad_polls_are_refused_with_the_reason(device, live_server):
    assert device.poll("temp", 100, since="last tuesday").status_code == 400
    undefined = device.poll("nosuch", 100)
    assert undefined.status_code == 400 and "nosuch" in undefined.text
    assert device.poll("temp&setpoint", 100).status_code == 400
    wrong = Device_(live_server, device.connector, "x" * 40)
    assert wrong.poll("temp", 100).status_code == 401
    assert device.poll("temp", 0).status_code == 304


def test_a_client_that_disconnects_while_waiting_leaves_nothing_behind(device, live_server):
    request = (
        "GET /onep:v1/stack/alias?temp HTTP/1.1\r\n"
        f"Host: {device.host}\r\nX-Exosite-CIK: {device.token}\r\n"
        "Request-Timeout: 60000\r\n\r\n"
    ).encode()
    clients = [socket.create_connection(("127.0.0.1", live_server.port)) for _ in range(5)]
    for client in clients:
        client.sendall(request)
    wait_for_waiters(5)
    for client in clients:
        client.close()
    wait_for_waiters(0)
    assert longpoll.hub.waiters == {}
    # The server still answers.
    assert device.write("temp=4").status_code == 204


def park_raw(server, device, count: int) -> list[socket.socket]:
    """`count` polls parked over raw sockets (closed by the caller)."""
    request = (
        "GET /onep:v1/stack/alias?temp HTTP/1.1\r\n"
        f"Host: {device.host}\r\nX-Exosite-CIK: {device.token}\r\n"
        "Request-Timeout: 60000\r\n\r\n"
    ).encode()
    clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(count)]
    for client in clients:
        client.sendall(request)
    return clients


def test_polls_per_device_and_per_process_are_capped(device, live_server, settings):
    settings.LONG_POLL_MAX_PER_DEVICE = 2
    settings.LONG_POLL_MAX_WAITING = 3
    other = activated(live_server, device.connector, "00000002")
    clients = park_raw(live_server, device, 2)
    try:
        wait_for_waiters(2)
        refused = device.poll("temp", 10_000)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "5"
        clients += park_raw(live_server, other, 1)  # another device still may
        wait_for_waiters(3)
        full = other.poll("temp", 10_000)
        assert full.status_code == 503 and full.headers["Retry-After"] == "5"
    finally:
        for client in clients:
            client.close()
    wait_for_waiters(0)
    assert longpoll.hub.parked == {} and longpoll.hub.parked_total == 0
    assert device.poll("temp", 0).status_code == 304  # room again


def test_many_polls_on_one_alias_are_all_woken(device, settings):
    settings.LONG_POLL_MAX_PER_DEVICE = 20
    with ThreadPoolExecutor(20) as pool:
        polls = [pool.submit(device.poll, "temp", 20_000) for _ in range(20)]
        wait_for_waiters(20)
        assert device.write("temp=8").status_code == 204
        answers = {(p.result(timeout=10).status_code, p.result().text) for p in polls}
    assert answers == {(200, "temp=8")}


def test_gdc_http_poll(device):
    from tests.test_compat_clients import gdc

    host = f"http://{device.host}:{device.base.rsplit(':', 1)[1]}"
    with ThreadPoolExecutor(1) as pool:
        polling = pool.submit(gdc, host, "-k", device.token, "http", "poll", "temp", "20000")
        wait_for_waiters(1)
        threading.Event().wait(0.05)
        assert device.write("temp=42").status_code == 204
        assert polling.result(timeout=30) == "[200] temp=42"
    assert (
        gdc(host, "-k", device.token, "http", "poll", "temp", "200", "9999999999")
        == "[304] Not modified"
    )


def test_without_the_front_a_poll_waits_in_its_thread(connector):
    """Plain WSGI (`runserver`, the Django test client): the poll holds its thread but still
    answers by its rules."""
    connector.devmode = True
    connector.save()
    define(connector, "temp")
    device_services.whitelist_device(connector, "00000001")
    client = DeviceClient(connector)
    token = client.activate("00000001").content.decode()
    started = time.monotonic()
    timed_out = client.read(token, "temp", HTTP_REQUEST_TIMEOUT="300")
    assert timed_out.status_code == 304 and time.monotonic() - started >= 0.3
    assert client.write(token, "temp=5").status_code == 204
    answered = client.read(token, "temp", HTTP_REQUEST_TIMEOUT="60000", HTTP_IF_MODIFIED_SINCE="0")
    assert (answered.status_code, answered.content) == (200, b"temp=5")


# --- Across server processes (PostgreSQL) -----------------------------------------------------


class ServerProcess:
    """`gunicorn iotconnector.asgi -c deploy/gunicorn.conf.py`, the production command, on the
    test database (or the database and DATA_DIR of `env`)."""

    def __init__(self, database_url: str | None, env: dict | None = None):
        import subprocess
        import sys
        from pathlib import Path

        from django.conf import settings

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root = Path(__file__).resolve().parent.parent
        env = env or {
            **__import__("os").environ,
            "DATABASE_URL": database_url,
            "DATA_DIR": str(settings.DATA_DIR),
        }
        env = {**env, "WEB_CONCURRENCY": "1"}
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self.process = subprocess.Popen(
            [str(gunicorn), "iotconnector.asgi", "-c", "deploy/gunicorn.conf.py"]
            + ["--bind", f"127.0.0.1:{self.port}", "--access-logfile", "/dev/null"],
            cwd=root,
            env=env,
        )
        for _ in range(200):
            try:
                if requests.get(f"{self.url}/healthz", timeout=5).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.05)
            except requests.Timeout:
                # gunicorn's socket accepts before its worker has booted: the first request
                # waits in the backlog, for seconds on a loaded machine.
                continue
        self.stop()
        raise AssertionError("the server process did not start")

    def wait_for_waiters(self, count: int) -> None:
        for _ in range(400):
            health = requests.get(f"{self.url}/healthz", timeout=5).text
            if f"waiting_polls {count}\n" in health:
                return
            time.sleep(0.01)
        raise AssertionError(f"expected {count} waiting polls: {health!r}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


@pytest.fixture
def two_processes(transactional_db):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("wake-ups across processes are PostgreSQL's: runs in its pass of the suite")
    params = connection.settings_dict
    url = f"postgres://{params['USER']}@{params['HOST']}:{params['PORT']}/{params['NAME']}"
    servers = [ServerProcess(url), ServerProcess(url)]
    yield servers
    for server in servers:
        server.stop()


def test_a_write_on_one_server_process_wakes_a_poll_on_another(two_processes):
    first, second = two_processes
    user = User.objects.create_user("maker@example.com", PASSWORD)
    connector = create_connector(user, "Two processes")
    connector.devmode = True
    connector.save()
    define(connector, "temp", setpoint={"format": "number", "settable": True})
    writer = activated(second, connector)
    poller = Device_(first, connector, writer.token)
    with ThreadPoolExecutor(2) as pool:
        temp = pool.submit(poller.poll, "temp", 20_000)
        setpoint = pool.submit(poller.poll, "setpoint", 20_000)
        first.wait_for_waiters(2)  # both parked in the first process
        assert writer.write("temp=30").status_code == 204
        assert (temp.result(timeout=10).status_code, temp.result().text) == (200, "temp=30")
        # A cloud set from a third process (this one) wakes it too.
        device_services.set_state(Device.objects.get(connector=connector), {"setpoint": 12})
        answer = setpoint.result(timeout=10)
    assert (answer.status_code, answer.text) == (200, "setpoint=12")


def test_a_graceful_stop_answers_parked_polls_at_once(two_processes):
    """SIGTERM (a deploy, a reload): parked polls get their 304 now instead of holding the
    worker until gunicorn kills it mid-answer."""
    first, _second = two_processes
    user = User.objects.create_user("maker@example.com", PASSWORD)
    connector = create_connector(user, "Restart")
    connector.devmode = True
    connector.save()
    define(connector, "temp")
    device = activated(first, connector)
    with ThreadPoolExecutor(1) as pool:
        polling = pool.submit(device.poll, "temp", 120_000)
        first.wait_for_waiters(1)
        started = time.monotonic()
        first.process.terminate()
        response = polling.result(timeout=20)
        first.process.wait(20)
    assert response.status_code == 304
    assert time.monotonic() - started < 10  # not the two minutes asked for
    assert first.process.returncode == 0


def test_a_write_while_the_listen_connection_is_down_still_answers_the_poll(device):
    """PostgreSQL: notifications sent while the LISTEN connection is down are lost; after it
    reconnects every parked poll re-reads, so the poll still gets the value."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's: runs in its pass of the suite")

    def listener_pids() -> list[int]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE query = %s", [f"LISTEN {longpoll.CHANNEL}"]
            )
            return [row[0] for row in cursor.fetchall()]

    with ThreadPoolExecutor(1) as pool:
        polling = pool.submit(device.poll, "temp", 20_000)
        wait_for_waiters(1)
        [listener] = listener_pids()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [listener])
        assert device.write("temp=77").status_code == 204  # its NOTIFY reaches no one
        response = polling.result(timeout=15)
    assert (response.status_code, response.text) == (200, "temp=77")
    for _ in range(100):  # listening again
        if listener_pids():
            break
        time.sleep(0.05)
    assert listener_pids() and listener_pids() != [listener]


def sqlite_servers(tmp_path, devices: int = 1, whitelisted: tuple[str, ...] = ()):
    """Two production server processes on one SQLite file (their own DATA_DIR), a connector
    in developer mode with `temp` defined, `devices` provisioned devices (their tokens) and
    more identities whitelisted. Skips outside the SQLite pass of the suite."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("SQLite between server processes: runs in the SQLite pass of the suite")
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {"DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "iotconnector.settings"}
    seed = f"""
import json, django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from connector.models import User
from connector.services import create_connector
from devices.resources import check_definitions
from devices.services import whitelist_device
from provisioning.services import activate_device
connector = create_connector(User.objects.create_user("m@example.com", "pw-123456789"), "Two")
connector.devmode = True
connector.resources = check_definitions({{"temp": {{}}}})
connector.resources_version += 1
connector.save()
tokens = []
for n in range({devices}):
    whitelist_device(connector, f"{{n + 1:08d}}")
    tokens.append(
        activate_device(connector, f"{{n + 1:08d}}", None, "127.0.0.1", secure=False).body)
for identity in {list(whitelisted)!r}:
    whitelist_device(connector, identity)
print(json.dumps({{"connector": connector.id, "tokens": tokens}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", seed], env=env, cwd=root, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    servers = [ServerProcess(None, env), ServerProcess(None, env)]
    return servers, SimpleNamespace(id=info["connector"]), info["tokens"]


@pytest.fixture
def sqlite_processes(tmp_path):
    """`sqlite_servers` with one device, and its token."""
    servers, connector, tokens = sqlite_servers(tmp_path)
    yield servers, connector, tokens[0]
    for server in servers:
        server.stop()


def test_sqlite_a_write_on_one_server_process_wakes_a_poll_on_another(sqlite_processes):
    (first, second), connector, token = sqlite_processes
    poller, writer = Device_(first, connector, token), Device_(second, connector, token)
    with ThreadPoolExecutor(1) as pool:
        polling = pool.submit(poller.poll, "temp", 20_000)
        first.wait_for_waiters(1)
        assert writer.write("temp=31").status_code == 204
        response = polling.result(timeout=10)
    assert (response.status_code, response.text) == (200, "temp=31")


def test_wake_bus_forgets_a_process_that_died_and_ignores_junk(tmp_path):
    from provisioning.wakebus import MAX_DATAGRAM, WakeBus, decode, encode

    bus = WakeBus(tmp_path)
    (tmp_path / "wake").mkdir()
    (tmp_path / "wake" / "999999999").touch()  # a marker whose process is gone
    try:
        bus.send([(1, "temp")])
    finally:
        bus.close()
    assert not (tmp_path / "wake" / "999999999").exists()
    assert [decode(d) for d in encode([(7, "a:b"), (8, "ü")])] == [[(7, "a:b"), (8, "ü")]]
    # Many keys: several datagrams of whole lines, none lost.
    many = [(n, f"alias-{n:05d}") for n in range(20_000)]
    datagrams = encode(many)
    assert len(datagrams) > 1 and all(len(d) <= MAX_DATAGRAM for d in datagrams)
    assert [key for d in datagrams for key in decode(d)] == many
    assert decode(b"x:1\n:a\n12\n\xff\xfe:z\n5:") == []
