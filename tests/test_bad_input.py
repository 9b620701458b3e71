"""Bad input gets a clear 4xx and stores nothing, never a 500 (the hardening issue's list):
deep JSON, lone surrogates, NUL, numbers no column holds, Unicode digits, bad Host headers,
repeated fields, chunked device bodies and record bodies too large to parse. On SQLite and
PostgreSQL (the suite runs on both)."""

import io
import logging
import time

import pytest
import requests

from connector import safeinput
from connector.models import Connector, Event, User
from devices import services as device_services
from devices.models import DataPoint, Device
from provisioning import longpoll, wire
from tests.conftest import PASSWORD, basic, define
from tests.device_client import DeviceClient

DEEP = "[" * 100_000 + "]" * 100_000
SURROGATE = '"\\ud800"'  # JSON text whose string is a lone surrogate
NUL = '"a\\u0000b"'


def settings_url(connector) -> str:
    return f"/api:1/service/{connector.id}/device2"


@pytest.mark.parametrize("body", [DEEP, "[" * 70 + "]" * 70, '{"a": ' * 5000 + "1" + "}" * 5000])
def test_deeply_nested_json_is_400_even_before_authentication(client, body):
    response = client.post("/api:1/token/", body, content_type="application/json")
    assert response.status_code == 400
    assert "nests deeper than" in response.json()["detail"]


@pytest.mark.parametrize("body", ["null", "[]", "3", '"text"'])
def test_a_token_request_that_is_not_an_object_is_400(client, body):
    """Found by the schemathesis run (tests/test_openapi.py): `null` answered 500."""
    response = client.post("/api:1/token/", body, content_type="application/json")
    assert response.status_code == 400
    assert "JSON object" in response.json()["detail"]


def test_deeply_nested_json_is_400_on_the_settings(api, connector):
    response = api.patch(settings_url(connector), DEEP, content_type="application/json")
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api:1/token/", '{"email": ' + SURROGATE + ', "password": "x"}'),
        ("/api:1/connector/", '{"name": ' + SURROGATE + "}"),
        ("/api:1/connector/", '{"name": ' + NUL + "}"),
        ("/api:1/connector/", '{"na\\ud800me": "x"}'),
    ],
)
def test_lone_surrogates_and_nul_in_json_are_400(api, path, body):
    response = api.post(path, body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert not Connector.objects.exclude(name="Factory line 1").exists()


@pytest.mark.parametrize(
    "definition",
    [
        '{"unit": ' + SURROGATE + "}",
        '{"initial": ' + NUL + "}",
        '{"format": "number", "allowed": [1e400]}',
        '{"format": "number", "allowed": [NaN]}',
        '{"format": "number", "allowed": [' + "9" * 5000 + "]}",
    ],
)
def test_a_resource_no_column_can_hold_is_400_and_the_settings_stay_readable(
    api, connector, definition
):
    body = '{"resources": {"temp": ' + definition + "}}"
    response = api.patch(settings_url(connector), body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert api.get(settings_url(connector)).status_code == 200
    connector.refresh_from_db()
    assert connector.resources == {}


def test_an_activation_deadline_beyond_64_bits_is_400(api, connector):
    url = f"/api:1/service/{connector.id}/device2/identity/d-1"
    body = '{"auth": {"expire": ' + str(2**63) + "}}"
    assert api.put(url, body, content_type="application/json").status_code == 400
    assert not Device.objects.exists()


def test_a_deeply_nested_tags_cell_is_refused_with_its_line(api, connector):
    csv = "ID,Tags\nd-1," + '"' + "[" * 100_000 + '"\n'
    upload = io.BytesIO(csv.encode())
    upload.name = "ids.csv"
    response = api.post(f"/api:1/service/{connector.id}/device2/identities", {"identities": upload})
    assert response.status_code == 400
    assert response.json()["errors"][0]["line"] == 2
    assert not Device.objects.exists()


@pytest.mark.parametrize(
    "query",
    [
        "?identity=%00",
        "?before=%00",
        "?tag=a:%00",
        "?limit=%C2%B2",  # ²: a digit to isdigit(), not to int()
        "?limit=" + "9" * 5000,
    ],
)
def test_identity_list_filters_refuse_nul_unicode_digits_and_huge_numbers(api, connector, query):
    response = api.get(f"/api:1/service/{connector.id}/device2/identity/{query}")
    assert response.status_code == 400


@pytest.mark.parametrize(
    "query", ["?limit=%C2%B2", "?before=%C2%B2", "?before=" + "9" * 5000, "?since=" + "9" * 30]
)
def test_log_filters_refuse_unicode_digits_and_huge_numbers(api, connector, query):
    assert api.get(f"/api:1/service/{connector.id}/logs{query}").status_code == 400


def test_nul_in_a_path_or_a_page_filter_is_400(api, browser_client, connector):
    assert api.get(f"/api:1/service/{connector.id}/device2/identity/a%00b").status_code == 400
    devices = f"/c/{connector.id}/devices/"
    assert browser_client.get(devices + "export.csv?tag_name=%00").status_code == 400
    assert browser_client.get(devices + "?identity=%00").status_code == 400


def test_the_logs_feed_and_page_refuse_unicode_digits(browser_client, connector):
    logs = f"/c/{connector.id}/logs/"
    assert browser_client.get(logs + "feed/?after=%C2%B2").status_code == 400
    assert browser_client.get(logs + "?before=%C2%B2").status_code == 200  # ignored


def test_basic_credentials_with_nul_are_401(client, alice, connector):
    response = client.get("/api:1/connector/", HTTP_AUTHORIZATION=basic("alice@example.com\x00"))
    assert response.status_code == 401
    define(connector, "temp")
    device_services.whitelist_device(connector, "d-1")
    dev = DeviceClient(connector)
    write = dev.post(
        "/onep:v1/stack/alias", "temp=1", HTTP_AUTHORIZATION=basic("d-1\x00", "x" * 30)
    )
    assert (write.status_code, write.content) == (401, b"malformed credentials")


def test_a_repeated_activation_field_is_400(connector):
    connector.devmode = True
    connector.save()
    for identity in ("a-1", "b-1"):
        device_services.whitelist_device(connector, identity)
    dev = DeviceClient(connector)
    response = dev.post("/provision/activate", "id=a-1&id=b-1")
    assert (response.status_code, response.content) == (400, b"id appears twice")
    assert not Device.objects.exclude(state="whitelisted").exists()


def test_huge_numbers_in_device_headers_and_records_are_clamped_or_refused(connector):
    assert longpoll.parse_timeout("9" * 5000) == longpoll.MAX_TIMEOUT_MS
    assert longpoll.parse_timeout("0" * 5000 + "1500") == 1500
    define(connector, "temp")
    connector.devmode = True
    connector.save()
    device_services.whitelist_device(connector, "d-1")
    dev = DeviceClient(connector)
    token = dev.activate("d-1").content.decode()
    record = dev.post(
        "/onep:v1/stack/record", "alias=temp&" + "9" * 5000 + "=1", HTTP_X_EXOSITE_CIK=token
    )
    assert record.status_code == 400 and b"future" in record.content
    assert not DataPoint.objects.exists()


def test_a_record_body_is_parsed_in_one_pass_and_bounded():
    now = int(time.time())
    limit = wire.MAX_RECORD_POINTS
    body = "alias=t&" + "&".join(f"{now - n}=1" for n in range(limit))
    assert len(wire.parse_record(body.encode(), now)["t"]) == limit
    with pytest.raises(wire.WireError) as too_many:
        wire.parse_record((body + f"&{now - limit}=1").encode(), now)
    assert too_many.value.status == 413
    with pytest.raises(wire.WireError, match="appears twice"):
        wire.parse_record(f"alias=t&{now}=1&{now - 1}=1&{now}=2".encode(), now)


def test_a_bad_host_header_is_one_warning_line_without_traceback(client, caplog):
    with caplog.at_level(logging.INFO, logger="django.security.DisallowedHost"):
        assert client.get("/healthz", HTTP_HOST="evil.example").status_code == 400
    handler = logging.getLogger("django.security.DisallowedHost").handlers[0]
    for record in caplog.records:
        handler.filter(record)
        assert record.levelno == logging.WARNING and record.exc_info is None
        assert "\n" not in record.getMessage()


def test_a_chunked_device_body_is_read(live_server, transactional_db):
    user = User.objects.create_user("chunk@example.com", PASSWORD)
    from connector.services import create_connector

    connector = create_connector(user, "Chunked")
    connector.devmode = True
    connector.save()
    device_services.whitelist_device(connector, "c-1")

    def chunks():
        yield b"id="
        yield b"c-1"

    response = requests.post(
        f"{live_server.url}/provision/activate",
        data=chunks(),  # no Content-Length: Transfer-Encoding: chunked
        headers={
            "Host": f"{connector.id}.localhost",
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        },
        timeout=10,
    )
    assert response.status_code == 200 and len(response.text) == 40
    assert Device.objects.get(identity="c-1").state == "devmode"
    assert Event.objects.filter(type="provisioned").count() == 1


def test_safeinput_refuses_what_no_column_holds():
    for bad in ("\ud800", "a\x00", 2**63, -(2**63) - 1, float("inf")):
        with pytest.raises(safeinput.InputError):
            safeinput.check({"k": [bad]})
    assert safeinput.check({"k": [2**63 - 1, "ok", 1.5, None, True]})
    for bad in ("²", "1" * 30, "-1", " ", "1.5"):
        with pytest.raises(safeinput.InputError):
            safeinput.whole_number(bad, "n")
