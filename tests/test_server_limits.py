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
