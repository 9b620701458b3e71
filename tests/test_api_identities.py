"""Identity management API (SPEC.md section 5) and the tutorial's curl calls."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import time_machine

from connector.models import Event, now_us
from devices.models import Device
from tests.certs import make_cert, pem
from tests.conftest import PASSWORD

DATA = Path(__file__).parent / "data"
HOUR_US = 3_600_000_000


@pytest.fixture
def base10(connector):
    connector.id_type, connector.id_length = "base10", 8
    connector.save()
    return connector


def url(connector, identity=""):
    return f"/api:1/service/{connector.id}/device2/identity/{identity}"


def test_put_whitelists_with_default_deadline(api, base10):
    before = now_us()
    response = api.put(url(base10, "00000001"), {"auth": {}, "locked": False}, format="json")
    assert response.status_code == 204
    device = Device.objects.get()
    assert device.identity == "00000001" and device.status == "whitelisted"
    assert before + 48 * HOUR_US <= device.expire <= now_us() + 48 * HOUR_US
    event = Event.objects.get(type="whitelisted")
    assert (event.identity, event.actor_email) == ("00000001", "alice@example.com")


def test_put_with_expire_and_tags_then_get(api, base10):
    expire = now_us() + 2 * HOUR_US
    body = {"auth": {"expire": expire}, "locked": True, "tags": [{"name": "group", "value": "g1"}]}
    assert api.put(url(base10, "00000002"), body, format="json").status_code == 204
    data = api.get(url(base10, "00000002")).json()
    assert data == {
        "identity": "00000002",
        "auth": {"type": None, "expire": expire},
        "status": "locked",
        "locked": True,
        "reprovision": False,
        "devmode": False,
        "lastip": None,
        "lastseen": None,
        "online": False,
        "tags": [{"name": "group", "value": "g1"}],
        "state": {},
    }


def test_put_existing_is_409(api, base10):
    api.put(url(base10, "00000001"), {}, format="json")
    response = api.put(url(base10, "00000001"), {}, format="json")
    assert response.status_code == 409
    assert Device.objects.count() == 1


@pytest.mark.parametrize(
    ("identity", "body", "field", "message"),
    [
        ("0000001", {}, "identity", "exactly 8 characters"),
        ("0000000x", {}, "identity", "only the digits"),
        ("00000001", {"auth": {"expire": 1700000000}}, "auth.expire", "looks like seconds"),
        ("00000001", {"auth": {"expire": now_us() - 1}}, "auth.expire", "in the past"),
        ("00000001", {"auth": {"expire": "soon"}}, "auth.expire", "whole number"),
        ("00000001", {"auth": {"type": "magic"}}, "auth.type", "token, password"),
        ("00000001", {"auth": {"type": "certificate"}}, "auth.key", "PEM certificate"),
        ("00000001", {"auth": {"type": "token", "key": "x"}}, "auth.key", "Only certificate"),
        ("00000001", {"auth": {"colour": 1}}, "auth.colour", "Unknown"),
        ("00000001", {"locked": "no"}, "locked", "true or false"),
        ("00000001", {"tags": {"a": 1}}, "tags", "a list"),
        ("00000001", {"tags": [{"name": "a"}]}, "tags", "exactly"),
        (
            "00000001",
            {"tags": [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]},
            "tags",
            "twice",
        ),
        ("00000001", {"owner": "me"}, "owner", "Unknown"),
        ("00000001", [], "non_field_errors", "JSON object"),
    ],
)
def test_put_bad_input_is_400_naming_the_field(api, base10, identity, body, field, message):
    response = api.put(url(base10, identity), body, format="json")
    assert response.status_code == 400
    assert message in response.json()[field]
    assert not Device.objects.exists()


def test_put_with_certificate_key(api, base10):
    cert, _ = make_cert("00000007")
    body = {"auth": {"type": "certificate", "key": pem(cert)}}
    assert api.put(url(base10, "00000007"), body, format="json").status_code == 204
    device = Device.objects.get()
    assert device.auth_type == "certificate" and device.cert_fingerprint
    other, _ = make_cert("00000009")
    response = api.put(
        url(base10, "00000008"), {"auth": {"type": "certificate", "key": pem(other)}}, format="json"
    )
    assert response.status_code == 400
    assert "CN is “00000009”" in response.json()["auth.key"]


def test_patch_lock_tags_and_revoke(api, base10):
    api.put(url(base10, "00000001"), {}, format="json")
    assert api.patch(url(base10, "00000001"), {"locked": True}, format="json").status_code == 204
    assert api.get(url(base10, "00000001")).json()["status"] == "locked"
    api.patch(
        url(base10, "00000001"),
        {"locked": False, "tags": [{"name": "k", "value": "v"}]},
        format="json",
    )
    data = api.get(url(base10, "00000001")).json()
    assert data["status"] == "whitelisted" and data["tags"] == [{"name": "k", "value": "v"}]
    Device.objects.update(state="provisioned", secret_hash="1$abc")
    assert (
        api.patch(url(base10, "00000001"), {"auth": {"expire": 0}}, format="json").status_code
        == 204
    )
    device = Device.objects.get()
    assert device.status == "reprovision" and device.secret_hash == ""
    types = list(Event.objects.order_by("id").values_list("type", flat=True))
    assert types[-4:] == ["locked", "unlocked", "updated", "revoked"]


def test_patch_is_all_or_nothing(api, base10):
    api.put(url(base10, "00000001"), {}, format="json")
    response = api.patch(url(base10, "00000001"), {"locked": True, "tags": "bad"}, format="json")
    assert response.status_code == 400
    assert not Device.objects.get().locked


def test_delete_is_205(api, base10):
    api.put(url(base10, "00000001"), {}, format="json")
    assert api.delete(url(base10, "00000001")).status_code == 205
    assert not Device.objects.exists()
    assert api.delete(url(base10, "00000001")).status_code == 404


def test_other_users_connector_is_404(api, bobs_connector):
    assert api.put(url(bobs_connector, "x1"), {}, format="json").status_code == 404
    assert api.get(url(bobs_connector)).status_code == 404
    assert api.post(f"/api:1/service/{bobs_connector.id}/device2/identities", {}).status_code == 404
    assert not Device.objects.exists()


def test_expired_whitelisting_reads_as_expired_everywhere(api, base10):
    with time_machine.travel("2026-06-01 12:00Z", tick=False):
        api.put(url(base10, "00000001"), {}, format="json")
        api.put(
            url(base10, "00000002"), {"auth": {"expire": now_us() + 72 * HOUR_US}}, format="json"
        )
    with time_machine.travel("2026-06-03 12:01Z", tick=False):
        assert api.get(url(base10, "00000001")).json()["status"] == "expired"
        listed = api.get(url(base10), {"status": "expired"}).json()["devices"]
        assert [d["identity"] for d in listed] == ["00000001"]
        listed = api.get(url(base10), {"status": "whitelisted"}).json()["devices"]
        assert [d["identity"] for d in listed] == ["00000002"]


def import_csv(api, connector, content: bytes, **extra):
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("identities.csv", content, content_type="text/csv")
    return api.post(
        f"/api:1/service/{connector.id}/device2/identities",
        {"identities": upload, **extra},
        format="multipart",
    )


def test_list_filters_and_keyset_pages(api, base10):
    import_csv(api, base10, (DATA / "identities.csv").read_bytes())
    first = api.get(url(base10), {"limit": 2}).json()
    assert [d["identity"] for d in first["devices"]] == ["00000001", "00000002"]
    assert first["mayLoadMore"] is True
    second = api.get(url(base10), {"limit": 2, "after": "00000002"}).json()
    assert [d["identity"] for d in second["devices"]] == ["00000003", "00000004"]
    last = api.get(url(base10), {"limit": 2, "after": "00000004"}).json()
    assert [d["identity"] for d in last["devices"]] == ["00000005"] and not last["mayLoadMore"]
    back = api.get(url(base10), {"limit": 2, "before": "00000003"}).json()
    assert [d["identity"] for d in back["devices"]] == ["00000001", "00000002"]
    assert back["mayLoadMore"] is False
    tagged = api.get(url(base10), {"tag": "group:g2"}).json()["devices"]
    assert [d["identity"] for d in tagged] == ["00000003", "00000004"]
    named = api.get(url(base10), {"tag": "claim_code"}).json()["devices"]
    assert len(named) == 5
    prefix = api.get(url(base10), {"identity": "0000000"}).json()["devices"]
    assert len(prefix) == 5
    assert api.get(url(base10), {"identity": "1"}).json()["devices"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 5000}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"status": "sleeping"}, "status"),
    ],
)
def test_list_bad_parameters_are_400(api, base10, params, field):
    response = api.get(url(base10), params)
    assert response.status_code == 400 and field in response.json()


def test_list_needs_few_queries(api, base10, django_assert_max_num_queries):
    import_csv(api, base10, (DATA / "identities.csv").read_bytes())
    with django_assert_max_num_queries(6):  # auth user, connector, devices, tags, (activity)
        assert len(api.get(url(base10)).json()["devices"]) == 5


def test_import_via_api_then_again(api, base10):
    api.put(url(base10, "00000001"), {}, format="json")
    response = import_csv(api, base10, (DATA / "identities.csv").read_bytes())
    assert response.status_code == 200
    assert response.json() == {"created": 4, "skipped": 1, "updated": 0}
    response = import_csv(api, base10, (DATA / "identities.csv").read_bytes(), update="true")
    assert response.json() == {"created": 0, "skipped": 0, "updated": 5}
    tags = api.get(url(base10, "00000001")).json()["tags"]
    assert tags == [{"name": "group", "value": "g1"}, {"name": "claim_code", "value": "abc"}]


def test_import_dry_run_writes_nothing(api, base10):
    response = import_csv(api, base10, (DATA / "identities.csv").read_bytes(), dry_run="true")
    assert response.json() == {"created": 5, "skipped": 0, "updated": 0}
    assert not Device.objects.exists()


def test_import_without_file_is_400(api, base10):
    response = api.post(f"/api:1/service/{base10.id}/device2/identities", {}, format="multipart")
    assert response.status_code == 400
    assert "identities" in response.json()["errors"][0]["message"]


def test_import_errors_are_400_with_lines(api, base10):
    content = b"ID,TLS Client Certificate,Tags\n00000001,,\n0000002,,\n00000003,,[\n"
    response = import_csv(api, base10, content)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert [e["line"] for e in errors] == [3, 4]
    assert not Device.objects.exists()


# --- The tutorial's curl commands, verbatim apart from the placeholders, on a live server ---


@pytest.fixture
def live_api(live_server, transactional_db):
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    from connector.models import User
    from connector.services import create_connector

    user = User.objects.create_user("maker@example.com", PASSWORD)
    connector = create_connector(user, "Tutorial")
    connector.id_type, connector.id_length = "base10", 8
    connector.save()
    return live_server.url + f"/api:1/service/{connector.id}", connector


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=30)


def test_tutorial_curl_whitelist_one_then_bulk(live_api, tmp_path):
    base, connector = live_api
    expire = now_us() + 24 * HOUR_US
    one = curl(
        "-X",
        "PUT",
        f"{base}/device2/identity/00000001",
        "-H",
        "Content-Type: application/json",
        "-d",
        '{"auth":{"expire":' + str(expire) + '},"locked":false}',
        "-vvv",
        "-u",
        f"maker@example.com:{PASSWORD}",
    )
    assert "< HTTP/1.1 204" in one.stderr, one.stderr
    csv_file = tmp_path / "identities.csv"
    csv_file.write_bytes((DATA / "identities.csv").read_bytes())
    bulk = curl(
        "-X",
        "POST",
        f"{base}/device2/identities",
        "-F",
        f"identities=@{csv_file}",
        "-u",
        f"maker@example.com:{PASSWORD}",
    )
    assert json.loads(bulk.stdout) == {"created": 4, "skipped": 1, "updated": 0}
    devices = Device.objects.filter(connector=connector).order_by("identity")
    assert [d.identity for d in devices] == [f"0000000{i}" for i in range(1, 6)]
    assert devices[0].expire == expire
    assert [t.value for t in devices[4].tags.all()] == ["g3", "def"]


def test_patch_reprovision_flag_revokes(api, base10):
    api.put(url(base10, "00000001"), {}, format="json")
    Device.objects.update(state="provisioned", secret_hash="1$abc")
    assert (
        api.patch(url(base10, "00000001"), {"reprovision": True}, format="json").status_code == 204
    )
    data = api.get(url(base10, "00000001")).json()
    assert data["status"] == "reprovision" and data["reprovision"] is True
    assert (
        api.patch(url(base10, "00000001"), {"reprovision": False}, format="json").status_code == 400
    )


def test_identity_state_after_device_writes(api, base10):
    from tests.conftest import define
    from tests.device_client import DeviceClient

    define(base10, "temp", "hum")
    api.put(url(base10, "00000001"), {}, format="json")
    dev = DeviceClient(base10)
    token = dev.activate("00000001").content.decode()
    dev.write(token, "temp=21.5&hum=40")
    state = api.get(url(base10, "00000001") + "/state").json()
    assert set(state) == {"temp", "hum"}
    assert state["temp"]["reported"] == "21.5" and state["temp"]["set"] is None
    assert api.get(url(base10, "00000001")).json()["state"] == state
    listed = api.get(url(base10)).json()["devices"][0]
    assert listed["state"] == state
