"""What the production server refuses before it does any work (the hardening issue): bodies
over the limit of the endpoint they are sent to, before they are read; and a worker whose
master was killed stops instead of holding the port."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from provisioning.host import MULTIPART_ROOM, body_limit
from provisioning.wire import MAX_BODY
from tests.conftest import basic
from tests.test_long_poll import ServerProcess


def test_each_endpoint_has_its_own_body_limit(settings):
    form = settings.DATA_UPLOAD_MAX_MEMORY_SIZE + MULTIPART_ROOM
    imports = settings.IMPORT_MAX_BYTES + MULTIPART_ROOM
    device = "t41hp23nod8s00000.localhost:8000"
    assert body_limit(device, "/onep:v1/stack/alias", True) == MAX_BODY
    api_import = "/api:1/service/t41hp23nod8s00000/device2/identities"
    assert body_limit(device, api_import, True) == MAX_BODY
    assert body_limit("localhost", "/api:1/token/", False) == form
    assert body_limit("localhost", "/login/", False) == form
    assert body_limit("localhost", api_import, True) == imports
    assert body_limit("localhost", api_import, False) == form  # nobody signed in
    assert body_limit("localhost", "/c/t41hp23nod8s00000/devices/import/", True) == imports
    assert body_limit("localhost", "/c/t41hp23nod8s00000/settings/", True) == form


def test_an_unauthenticated_large_body_is_refused_before_it_is_read(live_server, transactional_db):
    big = b"x" * (4 * 1024 * 1024)
    refused = requests.post(f"{live_server.url}/api:1/token/", data=big, timeout=30)
    assert refused.status_code == 413 and "larger than 3 MiB" in refused.text
    device = requests.post(
        f"{live_server.url}/onep:v1/stack/alias",
        data=b"a=" + b"1" * (MAX_BODY + 10),
        headers={"Host": "t41hp23nod8s00000.localhost"},
        timeout=30,
    )
    assert device.status_code == 413 and "larger than 1 MiB" in device.text


def test_the_import_endpoint_takes_a_large_file_from_a_signed_in_user(
    live_server, transactional_db, alice, connector
):
    csv = "ID\n" + "".join(f"{n:08d}\n" for n in range(400_000))  # 3.6 MB
    url = f"{live_server.url}/api:1/service/{connector.id}/device2/identities"
    files = {"identities": ("ids.csv", csv.encode(), "text/csv")}
    anonymous = requests.post(url, files=files, timeout=60)
    assert anonymous.status_code == 413
    signed = requests.post(
        url, files=files, headers={"Authorization": basic(alice.email)}, timeout=60
    )
    assert signed.status_code != 413  # read, and judged by the import (too many rows here)
    assert signed.status_code == 400


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_worker_stops_when_its_master_is_killed(tmp_path):
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {"DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "iotconnector.settings"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], env=env, cwd=root, check=True)
    server = ServerProcess(None, env)
    workers = _children(server.process.pid)
    try:
        assert workers, "no worker"
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        deadline = time.monotonic() + 15
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_running(pid) for pid in workers), "the orphaned worker kept serving"
        with socket.socket() as sock:  # the port is free for a restarted server
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", server.port))
            sock.listen()
    finally:
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(autouse=True)
def _import_rows(settings):
    settings.IMPORT_MAX_ROWS = 1000  # the large upload above is read, then refused for its rows


def test_a_body_that_stops_arriving_is_answered_408(live_server, transactional_db):
    saved = live_server.app.body_timeout
    live_server.app.body_timeout = 0.5
    try:
        with socket.create_connection(("127.0.0.1", live_server.port), timeout=10) as sock:
            sock.sendall(
                b"POST /api:1/token/ HTTP/1.1\r\nHost: localhost\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"email":'
            )
            answer = sock.recv(4096)  # without the server's own timeout: none in 10 s
    finally:
        live_server.app.body_timeout = saved
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"not sent in time" in answer


@pytest.fixture
def limits():
    """The guards' limits of the test server (iotconnector.protocol), restored after."""
    from iotconnector import protocol

    saved = vars(protocol.Limits).copy()
    yield protocol
    for name in ("header_timeout", "max_header_bytes", "max_connections"):
        setattr(protocol.Limits, name, saved[name])


def _answer(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_headers_that_arrive_too_slowly_are_answered_408_and_closed(live_server, limits):
    limits.Limits.header_timeout = 0.5
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: a")
        for _ in range(3):  # a byte now and then keeps no connection open
            time.sleep(0.1)
            sock.sendall(b"a")
        answer = _answer(sock)  # the server closes: recv returns b"" after the answer
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408") and b"not sent in time" in answer
    assert waited < 5
    # An idle connection that never sends a byte is closed the same way.
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=10) as sock:
        assert _answer(sock).startswith(b"HTTP/1.1 408")


def test_a_kept_alive_connection_gets_the_header_timeout_for_each_request(live_server, limits):
    limits.Limits.header_timeout = 0.5
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=10) as sock:
        time.sleep(0.3)  # within the timeout
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        time.sleep(0.3)  # the timeout starts again after each response
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("shape", ["many headers", "one endless header"])
def test_headers_over_the_limit_are_answered_431(live_server, limits, shape):
    limits.Limits.max_header_bytes = 8192
    if shape == "many headers":
        extra = b"".join(b"X-Pad-%d: %s\r\n" % (n, b"p" * 100) for n in range(100)) + b"\r\n"
    else:
        extra = b"X-Endless: " + b"e" * 200_000
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=10) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + extra)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we were still sending: the answer is already there
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431")
    # Within the limit, the same request is answered.
    ok = requests.get(f"{live_server.url}/healthz", headers={"X-Pad": "p" * 4000}, timeout=10)
    assert ok.status_code == 200


def test_a_new_connection_beyond_the_cap_takes_the_place_of_the_slowest(live_server, limits):
    limits.Limits.max_connections = 4
    limits.Limits.header_timeout = 60  # not what closes them here
    slow = []

    def one_more_slow_client():  # sends half a request line and stops
        sock = socket.create_connection(("127.0.0.1", live_server.port), timeout=5)
        sock.sendall(b"GET /heal")
        slow.append(sock)
        time.sleep(0.05)

    for _ in range(4):
        one_more_slow_client()
    try:
        close = {"Connection": "close"}
        for _ in range(3):  # each honest request gets in, in place of the slowest client
            honest = requests.get(f"{live_server.url}/healthz", headers=close, timeout=10)
            assert honest.status_code == 200
            one_more_slow_client()  # and the server is full again
        answers = [_answer(sock) for sock in slow[:3]]
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers)
    finally:
        for sock in slow:
            sock.close()


def test_beyond_the_cap_with_every_connection_busy_a_new_one_is_answered_503(live_server, limits):
    limits.Limits.max_connections = 4
    busy = []
    for _ in range(4):  # requests whose bodies are still to come: being served, not evicted
        sock = socket.create_connection(("127.0.0.1", live_server.port), timeout=10)
        sock.sendall(
            b"POST /api:1/token/ HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        busy.append(sock)
    try:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", live_server.port), timeout=10) as extra:
            answer = _answer(extra)
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer.lower()
    finally:
        for sock in busy:
            sock.close()
    time.sleep(0.2)  # the server sees them go
    assert requests.get(f"{live_server.url}/healthz", timeout=10).status_code == 200


def test_the_cap_leaves_descriptors_for_the_server_itself():
    from iotconnector.protocol import RESERVED_DESCRIPTORS, connection_cap

    assert connection_cap(0, 1024) == 1024 - RESERVED_DESCRIPTORS
    assert connection_cap(500, 1024) == 500
    assert connection_cap(5000, 1024) == 1024 - RESERVED_DESCRIPTORS  # never past the limit
