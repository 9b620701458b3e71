"""The content area against a live server (the production front): Exosite's gdc, curl with
ranges and resume, uploads through the descriptor with curl and requests, a replace while a
download is under way, a client that leaves half way."""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from connector.models import ContentItem, Event, EventType, User
from connector.services import create_connector
from devices import services as device_services
from provisioning import services as provisioning_services
from tests.conftest import PASSWORD, require
from tests.test_compat_clients import GDC, curl

DATA = os.urandom(3 * 1024 * 1024 + 17)  # several chunks, and not a multiple of one


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def live(live_server, transactional_db):
    user = User.objects.create_user("maker@example.com", PASSWORD)
    connector = create_connector(user, "Firmware")
    connector.devmode = True  # the live test server speaks plain HTTP
    connector.save()
    device_services.whitelist_device(connector, "dev1")
    answer = provisioning_services.activate_device(
        connector, "dev1", None, "127.0.0.1", secure=False
    )
    port = urlsplit(live_server.url).port
    session = requests.Session()
    session.auth = (user.email, PASSWORD)
    found = {
        "connector": connector,
        "api": f"{live_server.url}/api:1/service/{connector.id}/content/item",
        "device": f"http://{connector.id}.localhost:{port}",
        "token": answer.content.decode(),
        "session": session,
        "downloads": 0,  # files device_get was sent
    }
    yield found
    # The server logs a download once it has sent it, after the client has it all: let it
    # finish before the database is emptied (a flush beside it deadlocked on PostgreSQL).
    deadline = time.monotonic() + 5
    logged = Event.objects.filter(type=EventType.CONTENT_IN)
    while logged.count() < found["downloads"] and time.monotonic() < deadline:
        time.sleep(0.02)


def device_get(live, query: str, **kwargs) -> requests.Response:
    """A device call: to 127.0.0.1 with the connector's host name (no resolver needed)."""
    url = urlsplit(live["device"])
    headers = {"Host": url.netloc, "X-Exosite-CIK": live["token"], **kwargs.pop("headers", {})}
    response = requests.get(
        f"http://127.0.0.1:{url.port}/provision/download?{query}",
        headers=headers,
        timeout=30,
        **kwargs,
    )
    if response.status_code in (200, 206):  # a file sent, which the server then logs
        live["downloads"] += 1
    return response


def put(live, name: str, data: bytes, **query) -> dict:
    """Upload with requests through the descriptor, as a factory script would."""
    params = {"sha256": sha(data), "type": "application/octet-stream", **query}
    found = live["session"].get(f"{live['api']}/{name}/upload", params=params)
    assert found.status_code == 200, found.text
    found = found.json()
    posted = requests.post(
        found["url"], data=found["inputs"], files={found["field"]: data}, timeout=30
    )
    assert posted.status_code == 201, posted.text
    return posted.json()


def gdc_in(directory: Path, live, *args: str) -> str:
    try:
        import murano_client  # noqa: F401
    except ImportError:
        require(False, "murano-client is not installed (requirements-dev.txt)")
    result = subprocess.run(
        [sys.executable, str(GDC), "-H", live["device"] + "/", "-k", live["token"], *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=directory,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_gdc_content_list_info_download(live, tmp_path):
    put(live, "fw-2.0.bin", DATA, description="Release 2.0")
    put(live, "notes.txt", b"hello", type="text/plain")
    assert gdc_in(tmp_path, live, "http", "content", "list").splitlines() == [
        "fw-2.0.bin",
        "notes.txt",
    ]
    info = gdc_in(tmp_path, live, "http", "content", "info", "fw-2.0.bin")
    item = ContentItem.objects.get(name="fw-2.0.bin")
    updated = int(item.updated_at.timestamp())
    assert info == f"[200] application/octet-stream,{len(DATA)},{updated},Release 2.0"
    said = gdc_in(tmp_path, live, "http", "content", "download", "fw-2.0.bin")
    assert said == "[200] fw-2.0.bin"
    assert (tmp_path / "fw-2.0.bin").read_bytes() == DATA
    assert "[404]" in gdc_in(tmp_path, live, "http", "content", "info", "missing.bin")


def test_curl_upload_range_and_resume(live, tmp_path):
    source = tmp_path / "image.bin"
    source.write_bytes(DATA)
    found = live["session"].get(f"{live['api']}/image.bin/upload", params={"sha256": sha(DATA)})
    posted = curl("-w", "\n%{http_code}", "-F", f"file=@{source}", found.json()["url"])
    assert posted.stdout.endswith("\n201"), posted.stdout + posted.stderr
    url = urlsplit(live["device"])
    base = [
        "--resolve",
        f"{url.hostname}:{url.port}:127.0.0.1",
        "-H",
        f"X-Exosite-CIK: {live['token']}",
    ]
    target = f"{live['device']}/provision/download?id=image.bin"
    part = tmp_path / "part"
    ranged = curl(*base, "-r", "1000-65535", "-o", str(part), "-w", "%{http_code}", target)
    assert ranged.stdout == "206" and part.read_bytes() == DATA[1000:65536]
    # A download cut short, then resumed with `curl -C -`, is the file byte for byte.
    partial = tmp_path / "resumed.bin"
    partial.write_bytes(DATA[:1234567])
    resumed = curl(*base, "-C", "-", "-o", str(partial), "-w", "%{http_code}", target)
    assert resumed.stdout == "206", resumed.stderr
    assert sha(partial.read_bytes()) == sha(DATA)
    head = curl(*base, "-I", target)
    assert f"content-length: {len(DATA)}" in head.stdout.lower()
    assert "transfer-encoding" not in head.stdout.lower()


def test_whole_download_has_length_not_chunked(live):
    put(live, "fw.bin", DATA)
    response = device_get(live, "id=fw.bin")
    assert response.status_code == 200 and response.content == DATA
    assert response.headers["Content-Length"] == str(len(DATA))
    assert "Transfer-Encoding" not in response.headers
    assert response.headers["ETag"] == f'"{sha(DATA)}"'
    again = device_get(live, "id=fw.bin", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304


def test_replace_while_downloading_through_the_server(live):
    new = os.urandom(len(DATA) + 999)
    put(live, "fw.bin", DATA)
    with device_get(live, "id=fw.bin", stream=True) as response:
        chunks = response.iter_content(64 * 1024)
        first = next(chunks)
        put(live, "fw.bin", new)  # committed while this download is under way
        got = first + b"".join(chunks)
    assert sha(got) == sha(DATA)
    assert device_get(live, "id=fw.bin").content == new


def test_a_client_that_leaves_is_logged_with_what_it_got(live):
    big = os.urandom(24 * 1024 * 1024)
    put(live, "big.bin", big)
    with device_get(live, "id=big.bin", stream=True) as response:
        next(response.iter_content(64 * 1024))
        response.raw._fp.fp.raw._sock.close()  # the device drops the connection
    for _ in range(100):
        found = Event.objects.filter(type=EventType.CONTENT_IN).first()
        if found is not None:
            break
        time.sleep(0.05)
    assert found is not None and found.payload["complete"] is False
    assert 0 < found.payload["bytes"] < len(big)
    assert ContentItem.objects.get().downloads == 0  # not a finished download


def test_an_upload_over_the_limit_is_refused_before_it_is_read(live, settings):
    settings.CONTENT_MAX_BYTES = 1024 * 1024
    found = live["session"].get(f"{live['api']}/big.bin/upload", params={"sha256": sha(b"")})
    url = found.json()["url"]
    posted = requests.post(url, files={"file": b"x" * (3 * 1024 * 1024)}, timeout=30)
    assert posted.status_code == 413
    # A forged ticket gets only the ordinary form limit, whatever it declares.
    forged = url.rsplit("/", 1)[0] + "/abc.9999999999.forged"
    assert (
        requests.post(forged, files={"file": b"x" * (4 * 1024 * 1024)}, timeout=30).status_code
        == 413
    )
    assert ContentItem.objects.count() == 0
