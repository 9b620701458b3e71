"""The Devices tab: list, filters, pages, bulk actions, export, add one, import, device page."""

import csv
import io
from pathlib import Path

import pytest
import time_machine
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from connector.models import Event, now_us
from devices import services
from devices.models import Device
from tests.certs import make_cert, pem

DATA = Path(__file__).parent / "data"


@pytest.fixture
def base10(connector):
    connector.id_type, connector.id_length = "base10", 8
    connector.save()
    return connector


@pytest.fixture
def five(base10):
    for i in range(1, 6):
        services.whitelist_device(
            base10, f"0000000{i}", tags=[{"name": "group", "value": f"g{(i + 1) // 2}"}]
        )
    return base10


def list_url(connector, **params):
    from urllib.parse import urlencode

    url = reverse("device-list", args=[connector.id])
    return url + ("?" + urlencode(params) if params else "")


def identities(response):
    return [device.identity for device, _status, _connected in response.context["rows"]]


def test_list_shows_rows_with_status_tags_and_legend(browser_client, five):
    response = browser_client.get(list_url(five))
    assert identities(response) == [f"0000000{i}" for i in range(1, 6)]
    html = response.content.decode()
    assert html.count('class="status status-whitelisted"') >= 5
    assert "group: g1" in html and "Status icons" in html
    for label in (
        "Whitelisted",
        "Provisioned",
        "Locked",
        "Developer mode",
        "Reprovision",
        "Expired",
    ):
        assert label in html


def test_filters_status_tag_identity(browser_client, five):
    Device.objects.filter(identity="00000002").update(locked=True)
    assert identities(browser_client.get(list_url(five, status="locked"))) == ["00000002"]
    assert len(identities(browser_client.get(list_url(five, status="whitelisted")))) == 4
    assert identities(browser_client.get(list_url(five, tag_name="group", tag_value="g3"))) == [
        "00000005"
    ]
    assert identities(browser_client.get(list_url(five, identity="0000000")))[:1] == ["00000001"]
    assert identities(browser_client.get(list_url(five, identity="9"))) == []
    bad = browser_client.get(list_url(five, status="asleep"))
    assert "Unknown status" in bad.content.decode()


def test_list_pages_with_keyset(browser_client, five, monkeypatch):
    monkeypatch.setattr("devices.listing.DEFAULT_LIMIT", 2)
    first = browser_client.get(list_url(five))
    assert identities(first) == ["00000001", "00000002"]
    assert first.context["next_after"] == "00000002" and not first.context["prev_before"]
    second = browser_client.get(list_url(five, after="00000002"))
    assert identities(second) == ["00000003", "00000004"]
    assert second.context["prev_before"] == "00000003"
    back = browser_client.get(list_url(five, before="00000003"))
    assert identities(back) == ["00000001", "00000002"]


def test_list_query_count_does_not_grow_with_rows(
    browser_client, five, django_assert_max_num_queries
):
    with django_assert_max_num_queries(9):
        browser_client.get(list_url(five))


def test_expired_status_without_any_job(browser_client, base10):
    with time_machine.travel("2026-03-01 00:00Z", tick=False):
        services.whitelist_device(base10, "00000001")
    with time_machine.travel("2026-03-03 00:01Z", tick=False):
        response = browser_client.get(list_url(base10, status="expired"))
        assert identities(response) == ["00000001"]
        assert "status-expired" in response.content.decode()


def test_bulk_lock_unlock_and_delete_with_confirmation(browser_client, five):
    bulk = reverse("device-bulk", args=[five.id])
    browser_client.post(bulk, {"action": "lock", "identity": ["00000001", "00000002"]})
    assert set(Device.objects.filter(locked=True).values_list("identity", flat=True)) == {
        "00000001",
        "00000002",
    }
    browser_client.post(bulk, {"action": "unlock", "identity": ["00000001"]})
    assert list(Device.objects.filter(locked=True).values_list("identity", flat=True)) == [
        "00000002"
    ]
    confirm = browser_client.post(bulk, {"action": "delete", "identity": ["00000003", "00000004"]})
    assert confirm.status_code == 200 and "Delete 2 devices?" in confirm.content.decode()
    assert Device.objects.count() == 5
    browser_client.post(
        bulk, {"action": "delete", "confirm": "yes", "identity": ["00000003", "00000004"]}
    )
    assert Device.objects.count() == 3
    types = list(
        Event.objects.filter(type__in=["locked", "unlocked", "deleted"]).values_list(
            "type", "payload__count"
        )
    )
    assert types == [("locked", 2), ("unlocked", 1), ("deleted", 2)]


def test_bulk_actions_cannot_reach_another_connector(browser_client, five, bob, bobs_connector):
    services.whitelist_device(bobs_connector, "x1")
    browser_client.post(
        reverse("device-bulk", args=[five.id]),
        {"action": "delete", "confirm": "yes", "identity": ["x1"]},
    )
    assert Device.objects.filter(identity="x1").exists()
    assert (
        browser_client.post(
            reverse("device-bulk", args=[bobs_connector.id]), {"action": "lock", "identity": ["x1"]}
        ).status_code
        == 404
    )


def test_export_is_importable_and_escapes_formulas(browser_client, connector, alice):
    cert, _ = make_cert("=cmd")
    services.whitelist_device(
        connector, "=cmd", cert_pem=pem(cert), tags=[{"name": "group", "value": "g1"}]
    )
    services.whitelist_device(connector, "plain")
    response = browser_client.get(reverse("device-export", args=[connector.id]))
    assert response["Content-Type"].startswith("text/csv")
    body = b"".join(response.streaming_content)
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
    assert rows[0] == ["ID", "TLS Client Certificate", "Tags"]
    assert rows[1][0] == "'=cmd" and rows[1][1].startswith("'-----BEGIN CERTIFICATE-----")
    assert rows[1][2] == '[{"name": "group", "value": "g1"}]'
    assert rows[2] == ["plain", "", ""]
    # The export imports into another connector unchanged.
    from connector.services import create_connector
    from devices.importer import import_identities

    other = create_connector(alice, "copy")
    report = import_identities(other, io.BytesIO(body))
    assert report.as_json() == {"created": 2, "skipped": 0, "updated": 0}
    copied = Device.objects.get(connector=other, identity="=cmd")
    assert copied.cert_pem == pem(cert) and copied.tag_list == [{"name": "group", "value": "g1"}]


def test_export_follows_the_filter(browser_client, five):
    response = browser_client.get(
        reverse("device-export", args=[five.id]) + "?tag_name=group&tag_value=g1"
    )
    body = b"".join(response.streaming_content).decode("utf-8-sig")
    assert [r[0] for r in csv.reader(io.StringIO(body))][1:] == ["00000001", "00000002"]


def add(client, connector, **data):
    payload = {"activation_hours": "48", **data}
    return client.post(reverse("device-add", args=[connector.id]), payload)


def test_add_one_device_with_tags_certificate_and_period(browser_client, base10):
    page = browser_client.get(reverse("device-add", args=[base10.id])).content.decode()
    assert 'value="48"' in page and "Base 10" in page
    cert, _ = make_cert("00000001")
    before = now_us()
    response = add(
        browser_client,
        base10,
        identity="00000001",
        activation_hours="2",
        tags="group=g1\nclaim_code = abc",
        certificate=pem(cert),
    )
    assert response.status_code == 302
    device = Device.objects.get()
    assert device.tag_list == [
        {"name": "group", "value": "g1"},
        {"name": "claim_code", "value": "abc"},
    ]
    assert device.auth_type == "certificate"
    assert before + 2 * 3_600_000_000 <= device.expire <= now_us() + 2 * 3_600_000_000


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"identity": "0000001"}, "identity", "exactly 8 characters"),
        ({"identity": "abcdefgh"}, "identity", "only the digits"),
        ({"identity": "00000001", "tags": "novalue"}, "tags", "name=value"),
        ({"identity": "00000001", "certificate": "junk"}, "certificate", "No PEM certificate"),
        ({"identity": "00000001", "activation_hours": "0"}, "activation_hours", "greater than"),
    ],
)
def test_add_one_device_errors_next_to_fields(browser_client, base10, data, field, message):
    response = add(browser_client, base10, **data)
    assert response.status_code == 400
    assert message in " ".join(response.context["form"].errors[field])
    assert not Device.objects.exists()


def test_add_existing_identity_is_refused(browser_client, base10):
    add(browser_client, base10, identity="00000001")
    response = add(browser_client, base10, identity="00000001")
    assert "already whitelisted" in response.content.decode()


def test_identity_check_endpoint(browser_client, base10):
    url = reverse("device-check", args=[base10.id])
    assert browser_client.get(url, {"identity": "00000001"}).json() == {"valid": True, "reason": ""}
    result = browser_client.get(url, {"identity": "123"}).json()
    assert not result["valid"] and "exactly 8" in result["reason"]
    services.whitelist_device(base10, "00000001")
    assert (
        browser_client.get(url, {"identity": "00000001"}).json()["reason"] == "already whitelisted"
    )


def upload(client, connector, content: bytes, **extra):
    file = SimpleUploadedFile("identities.csv", content, content_type="text/csv")
    return client.post(reverse("device-import", args=[connector.id]), {"identities": file, **extra})


def test_import_page_checks_then_adds(browser_client, base10):
    services.whitelist_device(base10, "00000001")
    preview = upload(browser_client, base10, (DATA / "identities.csv").read_bytes())
    html = preview.content.decode()
    assert "4</strong> devices will be whitelisted" in html
    assert "1</strong> already exists and will be skipped" in html
    assert Device.objects.count() == 1  # nothing written yet
    token = preview.context["token"]
    done = browser_client.post(reverse("device-import", args=[base10.id]), {"token": token})
    assert done.status_code == 302
    assert Device.objects.count() == 5
    # The staged file is gone: the same token cannot import twice.
    again = browser_client.post(reverse("device-import", args=[base10.id]), {"token": token})
    assert again.status_code == 302 and Device.objects.count() == 5


def test_import_page_update_existing(browser_client, base10):
    services.whitelist_device(base10, "00000001")
    preview = upload(browser_client, base10, (DATA / "identities.csv").read_bytes(), update="on")
    assert "1</strong> existing device will be updated" in preview.content.decode()
    browser_client.post(
        reverse("device-import", args=[base10.id]), {"token": preview.context["token"]}
    )
    assert Device.objects.get(identity="00000001").tag_list[0] == {"name": "group", "value": "g1"}


def test_import_page_lists_every_error_with_its_line(browser_client, base10):
    content = b"ID,TLS Client Certificate,Tags\n00000001,,\nbad,,\n00000001,,\n"
    response = upload(browser_client, base10, content)
    assert response.status_code == 400
    html = response.content.decode()
    assert "Nothing was added." in html
    assert "Line 3: ID “bad”" in html and "Line 4: ID “00000001” appears again" in html
    assert response.context["token"] is None
    assert not Device.objects.exists()


def test_import_token_is_bound_to_user_and_connector(
    browser_client, client, base10, bob, bobs_connector
):
    token = upload(browser_client, base10, (DATA / "identities.csv").read_bytes()).context["token"]
    client.force_login(bob)
    response = client.post(reverse("device-import", args=[bobs_connector.id]), {"token": token})
    assert response.status_code == 302
    assert not Device.objects.exists()


def test_device_page_actions(browser_client, base10):
    services.whitelist_device(base10, "00000001", tags=[{"name": "a", "value": "1"}])
    url = reverse("device-detail", args=[base10.id, "00000001"])
    page = browser_client.get(url)
    assert page.context["tags_form"]["tags"].value() == "a=1"
    browser_client.post(url, {"action": "tags", "tags": "b=2"})
    assert Device.objects.get().tag_list == [{"name": "b", "value": "2"}]
    bad = browser_client.post(url, {"action": "tags", "tags": "oops"})
    assert bad.status_code == 400 and "name=value" in bad.content.decode()
    browser_client.post(url, {"action": "lock"})
    assert Device.objects.get().locked
    browser_client.post(url, {"action": "unlock"})
    assert not Device.objects.get().locked
    Device.objects.update(state="provisioned", secret_hash="1$x")
    browser_client.post(url, {"action": "revoke"})
    assert Device.objects.get().status == "reprovision"
    events = browser_client.get(url).context["events"]
    assert [e.type for e in events][:4] == ["revoked", "unlocked", "locked", "updated"]
    delete_url = reverse("device-delete", args=[base10.id, "00000001"])
    assert "Delete 1 device?" in browser_client.get(delete_url).content.decode()
    browser_client.post(delete_url)
    assert not Device.objects.exists()


@pytest.mark.parametrize(
    "name", ["device-list", "device-add", "device-import", "device-export", "device-check"]
)
def test_device_pages_of_another_user_are_404(browser_client, bobs_connector, name):
    assert browser_client.get(reverse(name, args=[bobs_connector.id])).status_code == 404


def test_device_page_of_another_user_is_404(browser_client, bobs_connector):
    services.whitelist_device(bobs_connector, "x1")
    for name in ("device-detail", "device-delete"):
        assert browser_client.get(reverse(name, args=[bobs_connector.id, "x1"])).status_code == 404
        browser_client.post(reverse(name, args=[bobs_connector.id, "x1"]), {"action": "lock"})
    assert Device.objects.filter(identity="x1", locked=False).exists()


def test_filter_certificates_expiring_soon(browser_client, connector):
    import datetime as dt

    soon, _ = make_cert(
        "soon", not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=360), days=365
    )
    later, _ = make_cert("later", days=365)
    services.whitelist_device(connector, "soon", cert_pem=pem(soon))
    services.whitelist_device(connector, "later", cert_pem=pem(later))
    services.whitelist_device(connector, "no-cert")
    assert identities(browser_client.get(list_url(connector, cert_expires_days=30))) == ["soon"]
    assert identities(browser_client.get(list_url(connector, cert_expires_days=400))) == [
        "later",
        "soon",
    ]
    bad = browser_client.get(list_url(connector, cert_expires_days="soon"))
    assert "Give a number of days" in bad.content.decode()


def test_device_page_shows_the_latest_values(browser_client, connector):
    from tests.conftest import define
    from tests.device_client import DeviceClient

    define(connector, "myalias")
    services.whitelist_device(connector, "d1")
    dev = DeviceClient(connector)
    token = dev.activate("d1").content.decode()
    dev.write(token, "myalias=50")
    page = browser_client.get(reverse("device-detail", args=[connector.id, "d1"])).content.decode()
    assert "Latest values" in page and ">myalias<" in page and ">50<" in page
