"""The rough edges issue #19 lists, found trying the pages as a new user would: each one
fixed and held here (the browser-only ones are in tests/test_browser.py)."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import call_command
from django.test import Client, RequestFactory

from connector import events
from connector.models import EventType
from devices import services as device_services
from devices.models import Device
from tests.conftest import define
from tests.device_client import DeviceClient
from tests.test_settings_page import ca_pem, form_data


@pytest.fixture
def signed_in(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


# --- Logs ----------------------------------------------------------------------------------


def test_logs_time_filters_are_utc_text_not_the_browsers_local_picker(signed_in, connector):
    page = signed_in.get(f"/c/{connector.pk}/logs/").content.decode()
    for name in ("since", "until"):
        field = re.search(rf'<input id="l-{name}"[^>]*>', page).group(0)
        assert 'type="datetime-local"' not in field and 'placeholder="2026-' in field
    assert "Times in UTC" in page
    # What the placeholder shows is what the filter takes.
    filtered = signed_in.get(f"/c/{connector.pk}/logs/", {"since": "2026-05-01T12:00"})
    assert filtered.status_code == 200 and 'class="error"' not in filtered.content.decode()


def test_a_log_row_expands_to_its_payload(signed_in, connector):
    events.record(
        connector, EventType.DATA_IN, "Write temp=20", identity="dev1", payload={"temp": "20"}
    )
    page = signed_in.get(f"/c/{connector.pk}/logs/").content.decode()
    row = page[page.index("Write temp=20") - 200 :]
    assert '<details class="payload"><summary>Write temp=20</summary>' in page
    assert "&quot;temp&quot;: &quot;20&quot;" in row.split("</details>", 1)[0]


def test_a_csv_import_event_names_the_identities(signed_in, connector):
    Device.objects.create(connector=connector, identity="00000001")
    csv = b"id\n00000001\n00000002\n00000003\n"
    upload = io.BytesIO(csv)
    upload.name = "ids.csv"
    check = signed_in.post(f"/c/{connector.pk}/devices/import/", {"identities": upload})
    text = check.content.decode()
    # The check step says which identities will be skipped.
    assert 'id="skipped-ids">00000001<' in text
    token = re.search(r'name="token" value="([^"]+)"', text).group(1)
    signed_in.post(f"/c/{connector.pk}/devices/import/", {"token": token})
    event = connector.events.get(type=EventType.WHITELISTED)
    assert "(00000002, 00000003)" in event.summary
    assert event.payload["identities"] == ["00000002", "00000003"]
    assert event.payload["skipped_identities"] == ["00000001"]


# --- Device page ---------------------------------------------------------------------------


@pytest.fixture
def device_page(signed_in, connector):
    define(connector, temp={"format": "number", "unit": "°C"})
    device_services.whitelist_device(connector, "dev1")

    def get() -> str:
        return signed_in.get(f"/c/{connector.pk}/devices/d/dev1/").content.decode()

    return connector, get


def test_a_device_that_never_provisioned_has_no_revoke_and_shows_its_deadline(device_page):
    _connector, get = device_page
    page = get()
    assert '<h2 class="identity-heading">' in page
    assert "Revoke credential" not in page
    assert "Activation deadline" in page


def test_a_provisioned_device_can_be_revoked_and_has_no_deadline_units_shown(device_page):
    connector, get = device_page
    dev = DeviceClient(connector)
    token = dev.activate("dev1").content.decode()
    assert dev.write(token, "temp=21.5").status_code == 204
    page = get()
    assert "Revoke credential" in page
    assert "Activation deadline" not in page
    assert "21.5 °C</td>" in page
    # The device's events carry the Logs tab's badge colours.
    assert 'class="badge badge-provisioned"' in page and 'class="badge badge-data_in"' in page


# --- Settings ------------------------------------------------------------------------------


def test_the_settings_error_summary_names_and_links_each_field(signed_in, connector):
    response = signed_in.post(
        f"/c/{connector.pk}/",
        {"activation_period_hours": "-3", "id_type": "nonsense", "ip_whitelisting_enabled": "on"},
    )
    assert response.status_code == 400
    summary = response.content.decode().split('id="settings-errors"', 1)[1].split("</div>", 1)[0]
    assert "data-focus-on-load" in summary
    links = re.findall(r'<li><a href="#(id_\w+)">([^<]+)</a>: ', summary)
    anchors = {anchor for anchor, _label in links}
    assert {"id_id_type", "id_activation_period_hours"} <= anchors
    page = response.content.decode()
    for anchor, _label in links:
        assert f'id="{anchor}"' in page  # each link lands on its control


def test_casing_is_offered_only_for_types_it_applies_to(signed_in, connector):
    page = signed_in.get(f"/c/{connector.pk}/").content.decode()
    block = re.search(r'<div data-show-when="#id_id_type" data-show-value="([^"]+)">', page)
    assert block is not None
    assert set(block.group(1).split(",")) == {
        "base16",
        "uuid_v4",
        "mac:colon",
        "mac:hyphen",
        "mac:none",
    }
    assert "id_id_casing" in page[block.end() : block.end() + 2000]


def test_turning_pki_on_warns_with_the_count_of_bound_certificates(signed_in, connector):
    for identity in ("c1", "c2"):
        Device.objects.create(
            connector=connector,
            identity=identity,
            auth_type="certificate",
            cert_fingerprint="ab" * 32,
            provisioned_at="2026-11-01T00:00Z",
        )
    data = form_data(connector, pki_enabled="on", client_ca_add=ca_pem()[0])
    page = signed_in.get(f"/c/{connector.pk}/").content.decode()
    assert 'id="pki-bound">2 devices use a certificate bound on first use' in page
    warned = signed_in.post(f"/c/{connector.pk}/", data)
    assert warned.status_code == 400
    assert "2 devices of this connector authenticate" in warned.content.decode()
    connector.refresh_from_db()
    assert connector.pki_enabled is False  # nothing saved before the confirmation
    saved = signed_in.post(f"/c/{connector.pk}/", {**data, "pki_confirm": "1"})
    assert saved.status_code == 302
    connector.refresh_from_db()
    assert connector.pki_enabled is True


# --- Pages ---------------------------------------------------------------------------------


def test_404_and_500_pages_have_the_sites_layout(signed_in, rf: RequestFactory):
    missing = signed_in.get("/c/nosuchconnector00/").content.decode()
    assert 'class="topbar"' in missing and "Not found" in missing
    from django.views.defaults import server_error

    error = server_error(rf.get("/")).content.decode()
    assert 'class="topbar"' in error and "Something went wrong" in error


def test_sign_in_and_sign_up_speak_plainly(client, alice):
    response = client.post("/login/", {"username": "alice@example.com", "password": "wrong"})
    text = response.content.decode()
    assert "do not match an account" in text
    assert "Note that both fields may be case-sensitive" not in text
    signup = client.get("/signup/").content.decode()
    assert "<ul>" not in signup.split('id="id_password1_helptext"', 1)[1].split("</p>", 1)[0]
    assert "At least 8 characters" in signup


def test_tls_stack_points_nginx_at_the_port_the_app_listens_on(db, monkeypatch, tmp_path):
    monkeypatch.setenv("PORT", "8123")
    out = io.StringIO()
    call_command("tls_stack", "--dir", str(tmp_path), stdout=out)
    config = (tmp_path / "nginx.conf").read_text()
    assert "127.0.0.1:8123" in config and "127.0.0.1:8000" not in config
