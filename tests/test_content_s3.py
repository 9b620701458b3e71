"""The content area on S3-compatible storage, end to end against a real S3 server on this
machine (moto's server mode, a separate process spoken to over HTTP as any store): the
store's own presigned POST, the check before an item appears, redirects to presigned GETs
(ranges served by the store), deletes, and gdc following the redirect."""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from connector.models import ContentItem, ContentUpload, Event, EventType
from devices import services as device_services
from tests.conftest import require
from tests.device_client import DeviceClient

BUCKET = "iot-content"
DATA = os.urandom(2 * 1024 * 1024 + 5)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def s3_server():
    server = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    require(os.path.exists(server), "moto[server] is not installed (requirements-dev.txt)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60  # a first start in a new venv compiles moto first
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=5)
            break
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.1)
    else:
        process.kill()
        pytest.fail("moto_server did not start")
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture
def s3(s3_server, settings):
    import boto3

    settings.CONTENT_STORAGE = "s3"
    settings.CONTENT_S3_BUCKET = BUCKET
    settings.CONTENT_S3_ENDPOINT_URL = s3_server
    settings.CONTENT_S3_ACCESS_KEY = "test-key"
    settings.CONTENT_S3_SECRET_KEY = "test-secret"  # noqa: S105
    settings.STORAGES = {
        **settings.STORAGES,
        "content": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": BUCKET,
                "endpoint_url": s3_server,
                "access_key": "test-key",
                "secret_key": "test-secret",
                "region_name": "us-east-1",
                "addressing_style": "path",
                "file_overwrite": True,
                "default_acl": None,
            },
        },
    }
    client = boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="test-key",
        aws_secret_access_key="test-secret",  # noqa: S106
    )
    client.create_bucket(Bucket=BUCKET)
    yield client
    for found in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=found["Key"])


def keys(client) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def s3_upload(api, connector, name, data, declared=None):
    params = {"sha256": declared or sha(data), "type": "application/x-firmware"}
    found = api.get(f"/api:1/service/{connector.id}/content/item/{name}/upload", params).json()
    posted = requests.post(
        found["url"], data=found["inputs"], files={found["field"]: data}, timeout=30
    )
    return found, posted


def test_upload_goes_straight_to_the_store(api, connector, s3, s3_server):
    found, posted = s3_upload(api, connector, "fw.bin", DATA)
    assert found["url"].startswith(s3_server)  # not through the app
    assert posted.status_code == 201, posted.text
    assert ContentItem.objects.count() == 0  # not visible before it is checked
    listed = api.get(f"/api:1/service/{connector.id}/content/item", {"full": "true"}).json()
    assert [(i["id"], i["length"], i["sha256"]) for i in listed] == [
        ("fw.bin", len(DATA), sha(DATA))
    ]
    assert ContentUpload.objects.count() == 0
    assert keys(s3) == [ContentItem.objects.get().blob]


def test_bytes_that_are_not_the_declared_ones_never_appear(api, connector, s3):
    _found, posted = s3_upload(api, connector, "fw.bin", b"other bytes", declared=sha(DATA))
    # The store took them (moto does not check checksums, as some S3-compatible stores do
    # not): the app's own check refuses them.
    assert posted.status_code in (201, 400)
    assert api.get(f"/api:1/service/{connector.id}/content/item").json() == []
    assert keys(s3) == []
    refusal = Event.objects.get(type=EventType.CONTENT_REFUSED)
    assert sha(b"other bytes") in refusal.summary


def test_device_download_redirects_to_the_store(api, connector, s3, s3_server):
    s3_upload(api, connector, "fw.bin", DATA)
    device_services.whitelist_device(connector, "dev1")
    dev = DeviceClient(connector)
    token = dev.activate("dev1").content.decode()
    assert dev.get("/provision/download", HTTP_X_EXOSITE_CIK=token).content == b"fw.bin\n"
    response = dev.get("/provision/download?id=fw.bin", HTTP_X_EXOSITE_CIK=token)
    assert response.status_code == 307
    location = response["Location"]
    assert location.startswith(s3_server)
    whole = requests.get(location, timeout=30)
    assert whole.content == DATA
    part = requests.get(location, headers={"Range": "bytes=100-199"}, timeout=30)
    assert part.status_code == 206 and part.content == DATA[100:200]
    event = Event.objects.get(type=EventType.CONTENT_IN)
    assert event.identity == "dev1" and event.payload["redirected"] is True


def test_signed_link_and_delete_on_the_store(
    api, connector, s3, s3_server, django_capture_on_commit_callbacks
):
    s3_upload(api, connector, "fw.bin", DATA)
    base = f"/api:1/service/{connector.id}/content/item/fw.bin"
    link = api.get(f"{base}/download").json()["url"]
    assert urlsplit(link).netloc == urlsplit(s3_server).netloc
    assert requests.get(link, timeout=30).content == DATA
    assert len(keys(s3)) == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(base).status_code == 204
    assert api.get(base).status_code == 404
    assert keys(s3) == []


def test_gdc_downloads_through_the_redirect(live_server, transactional_db, s3, tmp_path):
    from connector.models import User
    from connector.services import create_connector
    from provisioning import services as provisioning_services
    from tests.conftest import PASSWORD, basic
    from tests.test_content_live import gdc_in

    user = User.objects.create_user("s3@example.com", PASSWORD)
    connector = create_connector(user, "On S3")
    connector.devmode = True
    connector.save()
    session = requests.Session()
    session.headers["Authorization"] = basic(user.email)
    api = f"{live_server.url}/api:1/service/{connector.id}/content/item"
    found = session.get(f"{api}/fw.bin/upload", params={"sha256": sha(DATA)}, timeout=30).json()
    posted = requests.post(found["url"], data=found["inputs"], files={"file": DATA}, timeout=30)
    assert posted.status_code == 201
    device_services.whitelist_device(connector, "dev1")
    answer = provisioning_services.activate_device(
        connector, "dev1", None, "127.0.0.1", secure=False
    )
    port = urlsplit(live_server.url).port
    live = {"device": f"http://{connector.id}.localhost:{port}", "token": answer.content.decode()}
    assert gdc_in(tmp_path, live, "http", "content", "list") == "fw.bin"
    assert gdc_in(tmp_path, live, "http", "content", "download", "fw.bin") == "[200] fw.bin"
    assert (tmp_path / "fw.bin").read_bytes() == DATA
