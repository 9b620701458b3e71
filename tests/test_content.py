"""The content area (SPEC.md section 9): uploads through the signed descriptor, the device's
`/provision/download` (list, info, bytes, ranges, conditional requests), the management API,
events, limits and the atomic replace."""

import hashlib
import io
import json
import os
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import time_machine
from django.test import Client
from django.utils import timezone

from connector import content
from connector.models import ContentItem, ContentUpload, Event, EventType, OutboxEvent
from connector.services import create_connector
from devices import services as device_services
from provisioning.download import parse_range
from tests.conftest import define
from tests.device_client import DeviceClient

FIRMWARE = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and 4 bytes


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def descriptor(api, connector, name, data=FIRMWARE, **query):
    params = {"type": "application/octet-stream", "sha256": sha(data), **query}
    response = api.get(f"/api:1/service/{connector.id}/content/item/{name}/upload", params)
    assert response.status_code == 200, response.content
    return response.json()


def post_file(found: dict, data: bytes, name="fw.bin"):
    """POST the descriptor's inputs and the file, as a client of the descriptor does."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    path = urlsplit(found["url"]).path
    fields = {**found["inputs"], found["field"]: SimpleUploadedFile(name, data)}
    return Client().post(path, fields)


def upload(api, connector, name, data=FIRMWARE, **query):
    response = post_file(descriptor(api, connector, name, data, **query), data)
    assert response.status_code == 201, response.content
    return response.json()


def stored_files(settings) -> list[str]:
    root = settings.CONTENT_DIR
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files
    )


@pytest.fixture
def device(connector):
    define(connector, "temp")
    device_services.whitelist_device(connector, "dev1")
    dev = DeviceClient(connector)
    token = dev.activate("dev1").content.decode()
    assert len(token) == 40
    return dev, token


def fetch(dev, token, query="", **headers):
    path = "/provision/download" + (f"?{query}" if query else "")
    return dev.get(path, HTTP_X_EXOSITE_CIK=token, **headers)


def body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


# --- Ranges -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", (0, 10)),
        ("bytes=10-", (10, 90)),
        ("bytes=-5", (95, 5)),
        ("bytes=-500", (0, 100)),
        ("bytes=90-500", (90, 10)),
        ("bytes=100-", False),
        ("bytes=-0", False),
        ("bytes=9-3", None),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=-", None),
    ],
)
def test_parse_range(header, expected):
    assert parse_range(header, 100) == expected


# --- Uploads ----------------------------------------------------------------------------------


def test_upload_through_the_descriptor(api, connector, alice, settings):
    found = descriptor(api, connector, "fw-1.2.bin", description="Build 1.2")
    assert found["method"] == "POST" and found["enctype"] == "multipart/form-data"
    assert found["field"] == "file" and found["max_size"] == settings.CONTENT_MAX_BYTES
    assert ContentItem.objects.count() == 0  # nothing visible before the bytes arrive
    response = post_file(found, FIRMWARE)
    assert response.status_code == 201
    item = ContentItem.objects.get()
    assert (item.name, item.size, item.sha256) == ("fw-1.2.bin", len(FIRMWARE), sha(FIRMWARE))
    assert item.description == "Build 1.2" and item.uploaded_by == alice
    assert response.json() == content.item_json(item)
    event = Event.objects.get(type=EventType.CONTENT_UPLOADED)
    assert event.actor_email == alice.email and event.payload["sha256"] == sha(FIRMWARE)
    assert ContentUpload.objects.count() == 0  # used
    assert stored_files(settings) == [item.blob]
    # Used once: the same descriptor cannot upload again.
    assert post_file(found, FIRMWARE).status_code == 403


def test_sha256_mismatch_keeps_nothing(api, connector, settings):
    found = descriptor(api, connector, "fw.bin", data=b"the declared bytes")
    response = post_file(found, b"other bytes")
    assert response.status_code == 400
    assert sha(b"other bytes") in response.json()["sha256"]
    assert ContentItem.objects.count() == 0 and stored_files(settings) == []
    # The descriptor still takes the right bytes.
    assert post_file(found, b"the declared bytes").status_code == 201


def test_oversize_is_refused_and_leaves_nothing(api, connector, settings):
    settings.CONTENT_MAX_BYTES = 1000
    data = b"x" * 1001
    response = post_file(descriptor(api, connector, "big.bin", data=data), data)
    assert response.status_code == 413
    assert "larger than" in response.json()["file"]
    assert ContentItem.objects.count() == 0 and stored_files(settings) == []


def test_connector_quota(api, connector, settings):
    settings.CONTENT_CONNECTOR_MAX_BYTES = 1500
    upload(api, connector, "a.bin", b"a" * 1000)
    data = b"b" * 600
    response = post_file(descriptor(api, connector, "b.bin", data=data), data)
    assert response.status_code == 507
    assert "CONTENT_CONNECTOR_MAX_BYTES" in response.json()["file"]
    # Replacing an item counts its new size, not both.
    upload(api, connector, "a.bin", b"c" * 1400)
    assert content.usage(connector).bytes == 1400


def test_upload_expires(api, connector):
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        found = descriptor(api, connector, "fw.bin", expires_in="60")
        traveller.shift(timedelta(seconds=61))
        response = post_file(found, FIRMWARE)
    assert response.status_code == 403 and "expired" in response.json()["detail"]
    assert ContentItem.objects.count() == 0


def test_a_forged_ticket_is_refused(api, connector):
    found = descriptor(api, connector, "fw.bin")
    upload_id, expires, mac = urlsplit(found["url"]).path.rsplit("/", 1)[1].split(".")
    forged = f"/api:1/content-upload/{upload_id}.{int(expires) + 3600}.{mac}"
    assert Client().post(forged, {"file": b""}).status_code == 403


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"sha256": "abc"}, "sha256"),
        ({"sha256": ""}, "sha256"),
        ({"type": "not a type"}, "type"),
        ({"expires_in": "0"}, "expires_in"),
        ({"expires_in": "999999"}, "expires_in"),
        ({"description": "two\nlines"}, "description"),
        ({"tags": "[1]"}, "tags"),
    ],
)
def test_descriptor_refuses_bad_parameters(api, connector, query, field):
    params = {"sha256": sha(FIRMWARE), **query}
    response = api.get(f"/api:1/service/{connector.id}/content/item/fw.bin/upload", params)
    assert response.status_code == 400
    assert field in response.json()
    assert ContentUpload.objects.count() == 0


def test_bad_names_are_refused(api, connector):
    for name in ("a" * 129, "sp%20ace", "semi;colon"):
        response = api.get(f"/api:1/service/{connector.id}/content/item/{name}/upload")
        assert response.status_code == 400, name


def test_upload_without_the_file_field(api, connector):
    found = descriptor(api, connector, "fw.bin")
    path = urlsplit(found["url"]).path
    assert Client().post(path, {"other": "x"}).status_code == 400
    assert Client().post(path, "not multipart", content_type="text/plain").status_code == 400


# --- Management API ---------------------------------------------------------------------------


def test_list_info_delete(api, connector, settings, django_capture_on_commit_callbacks):
    upload(api, connector, "b.bin", b"bee", tags=json.dumps({"hw": "r2"}))
    upload(api, connector, "a.bin", b"ay")
    base = f"/api:1/service/{connector.id}/content/item"
    assert api.get(base).json() == ["a.bin", "b.bin"]
    full = api.get(base, {"full": "true"}).json()
    assert [(i["id"], i["length"], i["tags"]) for i in full] == [
        ("a.bin", 2, {}),
        ("b.bin", 3, {"hw": "r2"}),
    ]
    assert api.get(f"{base}/b.bin").json()["sha256"] == sha(b"bee")
    assert api.get(f"{base}/nope.bin").status_code == 404
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"{base}/a.bin").status_code == 204
    assert api.delete(f"{base}/a.bin").status_code == 404
    assert len(stored_files(settings)) == 1
    assert api.get(base).json() == ["b.bin"]
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(base).status_code == 204
    assert api.get(base).json() == [] and stored_files(settings) == []
    assert Event.objects.filter(type=EventType.CONTENT_DELETED).count() == 2


def test_another_users_connector_is_404(api, bobs_connector):
    base = f"/api:1/service/{bobs_connector.id}/content/item"
    assert api.get(base).status_code == 404
    assert api.get(f"{base}/x.bin/upload", {"sha256": sha(b"")}).status_code == 404
    assert api.delete(base).status_code == 404


# --- Device side ------------------------------------------------------------------------------


def test_device_lists_and_reads_info(api, connector, device):
    dev, token = device
    assert fetch(dev, token).content == b""
    upload(api, connector, "fw.bin", FIRMWARE, description="Build 7, for rev B")
    upload(api, connector, "cfg.json", b"{}", type="application/json")
    listed = fetch(dev, token)
    assert listed.status_code == 200 and listed["Content-Type"].startswith("text/csv")
    assert listed.content == b"cfg.json\nfw.bin\n"
    info = fetch(dev, token, "id=fw.bin&info=true")
    item = ContentItem.objects.get(name="fw.bin")
    updated = int(item.updated_at.timestamp())
    assert info.content.decode() == (
        f"application/octet-stream,{len(FIRMWARE)},{updated},Build 7, for rev B"
    )
    assert fetch(dev, token, "id=nope&info=true").status_code == 404


def test_device_downloads_whole_and_ranges(api, connector, device):
    dev, token = device
    upload(api, connector, "fw.bin", FIRMWARE)
    whole = fetch(dev, token, "id=fw.bin")
    assert whole.status_code == 200 and body(whole) == FIRMWARE
    assert whole["Content-Length"] == str(len(FIRMWARE))
    assert whole["ETag"] == f'"{sha(FIRMWARE)}"' and whole["Accept-Ranges"] == "bytes"
    part = fetch(dev, token, "id=fw.bin", HTTP_RANGE="bytes=1000-1999")
    assert part.status_code == 206 and body(part) == FIRMWARE[1000:2000]
    assert part["Content-Range"] == f"bytes 1000-1999/{len(FIRMWARE)}"
    tail = fetch(dev, token, "id=fw.bin", HTTP_RANGE="bytes=-4")
    assert body(tail) == b"tail"
    resumed = fetch(dev, token, "id=fw.bin", HTTP_RANGE="bytes=1048000-")
    assert body(resumed) == FIRMWARE[1048000:]
    bad = fetch(dev, token, "id=fw.bin", HTTP_RANGE=f"bytes={len(FIRMWARE)}-")
    assert bad.status_code == 416 and bad["Content-Range"] == f"bytes */{len(FIRMWARE)}"
    cached = fetch(dev, token, "id=fw.bin", HTTP_IF_NONE_MATCH=whole["ETag"])
    assert cached.status_code == 304 and cached.content == b""
    # A range of another version (If-Range) gets the whole current file instead.
    stale = fetch(dev, token, "id=fw.bin", HTTP_RANGE="bytes=0-9", HTTP_IF_RANGE='"old"')
    assert stale.status_code == 200 and body(stale) == FIRMWARE
    same = fetch(dev, token, "id=fw.bin", HTTP_RANGE="bytes=0-9", HTTP_IF_RANGE=whole["ETag"])
    assert same.status_code == 206 and body(same) == FIRMWARE[:10]
    assert fetch(dev, token, "id=missing.bin").status_code == 404


def test_download_is_an_event_and_counted(api, connector, device):
    connector.events_enabled = True
    connector.save()
    dev, token = device
    upload(api, connector, "fw.bin", FIRMWARE)
    body(fetch(dev, token, "id=fw.bin"))
    body(fetch(dev, token, "id=fw.bin", HTTP_RANGE="bytes=0-99"))
    events = Event.objects.filter(type=EventType.CONTENT_IN).order_by("id")
    assert [(e.identity, e.payload["bytes"]) for e in events] == [
        ("dev1", len(FIRMWARE)),
        ("dev1", 100),
    ]
    assert ContentItem.objects.get().downloads == 2
    rows = OutboxEvent.objects.filter(type="content_in").order_by("id")
    values = [json.loads(r.payload)[0]["values"] for r in rows]
    assert values == [{"id": "fw.bin", "bytes": len(FIRMWARE)}, {"id": "fw.bin", "bytes": 100}]


def test_download_needs_a_device_of_this_connector(api, connector, device, bob):
    dev, token = device
    upload(api, connector, "fw.bin", FIRMWARE)
    assert fetch(dev, "X" * 40, "id=fw.bin").status_code == 401
    assert dev.get("/provision/download?id=fw.bin").status_code == 401
    other = create_connector(bob, "Other")
    device_services.whitelist_device(other, "dev9")
    theirs = DeviceClient(other)
    their_token = theirs.activate("dev9").content.decode()
    assert fetch(theirs, their_token).content == b""  # sees none of this connector's items
    assert fetch(theirs, their_token, "id=fw.bin").status_code == 404
    assert fetch(theirs, their_token, "id=fw.bin&info=true").status_code == 404
    assert fetch(dev, their_token, "id=fw.bin").status_code == 401  # not a device here


def test_signed_download_link(api, connector, device):
    upload(api, connector, "fw.bin", FIRMWARE)
    base = f"/api:1/service/{connector.id}/content/item/fw.bin/download"
    link = api.get(base, {"expires_in": "60"}).json()
    assert link["method"] == "GET"
    url = urlsplit(link["url"])
    assert url.hostname == connector.fqdn
    anonymous = DeviceClient(connector)
    response = anonymous.get(f"{url.path}?{url.query}")
    assert response.status_code == 200 and body(response) == FIRMWARE
    event = Event.objects.filter(type=EventType.CONTENT_IN).get()
    assert event.identity == "" and "signed link" in event.summary
    tampered = url.query.replace("id=fw.bin", "id=other.bin")
    assert anonymous.get(f"{url.path}?{tampered}").status_code == 403
    with time_machine.travel(timezone.now() + timedelta(seconds=61)):
        assert anonymous.get(f"{url.path}?{url.query}").status_code == 403
    assert api.get(f"/api:1/service/{connector.id}/content/item/x/download").status_code == 404


def test_replace_while_downloading_sends_one_version(
    api, connector, device, settings, django_capture_on_commit_callbacks
):
    dev, token = device
    old, new = b"old!" * 100_000, b"NEW?" * 120_000
    upload(api, connector, "fw.bin", old)
    response = fetch(dev, token, "id=fw.bin")
    chunks = iter(response.streaming_content)
    first = next(chunks)  # the download has begun
    with django_capture_on_commit_callbacks(execute=True):
        upload(api, connector, "fw.bin", new)  # replaced, the old bytes deleted
    assert first + b"".join(chunks) == old
    assert body(fetch(dev, token, "id=fw.bin")) == new
    assert len(stored_files(settings)) == 1  # the old file is gone


def test_deleting_the_connector_deletes_its_files(
    api, connector, settings, alice, django_capture_on_commit_callbacks
):
    from connector import services

    upload(api, connector, "fw.bin", FIRMWARE)
    assert stored_files(settings)
    with django_capture_on_commit_callbacks(execute=True):
        services.delete_connector(connector, alice)
    assert stored_files(settings) == []


def test_signed_link_keeps_the_transport_rule(api, connector):
    upload(api, connector, "fw.bin", FIRMWARE)
    link = api.get(f"/api:1/service/{connector.id}/content/item/fw.bin/download").json()
    url = urlsplit(link["url"])
    plain = DeviceClient(connector, secure=False)
    assert plain.get(f"{url.path}?{url.query}").status_code == 403  # no TLS, no developer mode
    connector.devmode = True
    connector.save()
    allowed = plain.get(f"{url.path}?{url.query}")
    assert allowed.status_code == 200 and body(allowed) == FIRMWARE


def test_prune_drops_expired_uploads_and_orphaned_files(api, connector, settings):
    from django.core.management import call_command

    upload(api, connector, "kept.bin", b"kept")
    found = descriptor(api, connector, "never.bin", data=b"never")
    orphan = settings.CONTENT_DIR / connector.id / "lost.bin.0123"
    orphan.write_bytes(b"left by a crash")
    old = (timezone.now() - timedelta(hours=2)).timestamp()
    os.utime(orphan, (old, old))
    young = settings.CONTENT_DIR / connector.id / "settling.bin.4567"
    young.write_bytes(b"being settled")
    with time_machine.travel(timezone.now() + timedelta(seconds=901)):
        out = io.StringIO()
        call_command("prune_events", stdout=out)
    assert "Deleted 1 expired content upload and 1 orphaned content file." in out.getvalue()
    assert not ContentUpload.objects.filter(
        pk=found["url"].rsplit("/", 1)[1].split(".")[0]
    ).exists()
    assert not orphan.exists() and young.exists()
    assert ContentItem.objects.get().name == "kept.bin"
    assert stored_files(settings) == sorted(
        [ContentItem.objects.get().blob, f"{connector.id}/settling.bin.4567"]
    )
