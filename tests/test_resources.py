"""Resources (SPEC.md section 4): definitions, checked writes, settable values, the tab."""

import pytest
from django.urls import reverse

from connector.models import Event
from devices import services as device_services
from devices.models import AliasValue, DataPoint
from devices.resources import check_definition, value_error
from tests.conftest import define
from tests.device_client import DeviceClient


@pytest.mark.parametrize(
    ("definition", "raw", "reason"),
    [
        ({"format": "number"}, "21.5", None),
        ({"format": "number"}, "warm", "not a number"),
        ({"format": "number"}, "nan", "not a number"),
        ({"format": "boolean"}, "TRUE", None),
        ({"format": "boolean"}, "yes", "not a boolean"),
        ({"format": "number", "allowed": ["9-11"]}, "10.5", None),
        ({"format": "number", "allowed": ["9-11", 20]}, "20", None),
        ({"format": "number", "allowed": ["9-11"]}, "12", "not one of the allowed values (9-11)"),
        ({"format": "string", "allowed": ["on", "off"]}, "off", None),
        ({"format": "string", "allowed": ["on", "off"]}, "dim", "not one of the allowed"),
        ({"format": "string"}, "anything at all", None),
    ],
)
def test_value_checks(definition, raw, reason):
    clean = check_definition("alias", definition)
    error = value_error(clean, raw)
    assert (error is None) if reason is None else (reason in error)


@pytest.mark.parametrize(
    ("alias", "definition", "message"),
    [
        ("bad alias", {}, "an alias is"),
        ("a", {"format": "color"}, "a.format"),
        ("a", {"settable": "yes"}, "a.settable"),
        ("a", {"format": "number", "allowed": ["x"]}, "a.allowed"),
        ("a", {"format": "number", "initial": "x"}, "a.initial"),
        ("a", {"colour": 1}, "a.colour: unknown field"),
    ],
)
def test_bad_definitions(alias, definition, message):
    with pytest.raises(ValueError, match=message):
        check_definition(alias, definition)


@pytest.fixture
def device(connector):
    define(
        connector,
        temp={"format": "number", "allowed": ["-40-85"], "unit": "°C"},
        setpoint={"format": "number", "settable": True, "initial": "20"},
        mode={"format": "string", "allowed": ["eco", "comfort"]},
    )
    device_services.whitelist_device(connector, "d1")
    dev = DeviceClient(connector)
    return dev, dev.activate("d1").content.decode()


def test_undefined_aliases_are_logged_not_stored(device):
    dev, token = device
    assert dev.write(token, "temp=21&myalias=50").status_code == 204
    assert list(AliasValue.objects.values_list("alias", flat=True)) == ["temp"]
    event = Event.objects.filter(type="data_in").last()
    assert event.payload == {"values": {"temp": "21", "myalias": "50"}, "not_stored": ["myalias"]}
    assert dev.read(token, "myalias").status_code == 204


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("temp=hot", "temp: 'hot' is not a number"),
        ("temp=99", "not one of the allowed"),
        ("mode=turbo&temp=20", "mode:"),
    ],
)
def test_values_refused_by_their_definition_are_400_and_nothing_is_stored(device, body, reason):
    dev, token = device
    response = dev.write(token, body)
    assert response.status_code == 400 and reason in response.content.decode()
    assert not AliasValue.objects.exists()


def test_settable_reads_answer_the_set_value_and_the_initial_one_first(device, api, connector):
    dev, token = device
    assert dev.read(token, "setpoint").content == b"setpoint=20"  # initial, nothing written yet
    dev.write(token, "setpoint=22")
    assert dev.read(token, "setpoint").content == b"setpoint=22"
    value = AliasValue.objects.get(alias="setpoint")
    assert (value.reported, value.set) == ("22", "22")
    dev.write(token, "temp=21")
    value = AliasValue.objects.get(alias="temp")
    assert (value.reported, value.set) == ("21", None)


def test_record_checks_values_and_skips_undefined_aliases(device):
    dev, token = device
    bad = dev.post("/onep:v1/stack/record", "alias=temp&1700000000=hot", HTTP_X_EXOSITE_CIK=token)
    assert bad.status_code == 400 and "not a number" in bad.content.decode()
    ok = dev.post(
        "/onep:v1/stack/record",
        "alias=temp&1700000000=20&alias=other&1700000000=1",
        HTTP_X_EXOSITE_CIK=token,
    )
    assert ok.status_code == 204
    assert list(DataPoint.objects.values_list("alias", flat=True)) == ["temp"]


def test_changing_definitions_takes_effect_at_once(device, connector):
    dev, token = device
    dev.write(token, "temp=21")  # warms any per-process copy of the definitions
    define(connector, temp={"format": "string"})
    assert dev.write(token, "temp=warm").status_code == 204
    assert AliasValue.objects.get(alias="temp").reported == "warm"


def test_resources_tab_defines_and_removes(browser_client, connector):
    url = reverse("connector-resources", args=[connector.id])
    response = browser_client.post(
        url,
        {"alias": "temp", "format": "number", "unit": "°C", "allowed": "9-11, 20", "initial": "10"},
    )
    assert response.status_code == 302
    connector.refresh_from_db()
    assert connector.resources["temp"] == {
        "format": "number",
        "unit": "°C",
        "settable": False,
        "allowed": ["9-11", "20"],
        "initial": "10",
    }
    assert connector.resources_version >= 1
    page = browser_client.get(url).content.decode()
    assert ">temp<" in page and "9-11, 20" in page
    bad = browser_client.post(url, {"alias": "x", "format": "number", "initial": "warm"})
    assert bad.status_code == 400 and "not a number" in bad.content.decode()
    bad_alias = browser_client.post(url, {"alias": "a b", "format": "string"})
    assert bad_alias.status_code == 400
    browser_client.post(url, {"delete": "temp"})
    connector.refresh_from_db()
    assert connector.resources == {}
    summaries = list(
        Event.objects.filter(type="settings_changed").values_list("summary", flat=True)
    )
    assert summaries == ["Resource temp defined", "Resource temp removed"]


def test_resources_in_the_settings_json(api, connector):
    url = f"/api:1/service/{connector.id}/device2"
    body = {"resources": {"temp": {"format": "number", "unit": "°C"}}}
    assert api.patch(url, body, format="json").status_code == 204
    assert api.get(url).json()["resources"] == {
        "temp": {
            "format": "number",
            "unit": "°C",
            "settable": False,
            "allowed": [],
            "initial": None,
        }
    }


def test_cloud_set_of_settable_aliases(device, api, connector):
    dev, token = device
    url = f"/api:1/service/{connector.id}/device2/identity/d1/state"
    assert api.patch(url, {"setpoint": 23}, format="json").status_code == 204
    assert dev.read(token, "setpoint").content == b"setpoint=23"
    state = api.get(url).json()
    assert state["setpoint"]["set"] == "23" and state["setpoint"]["reported"] is None
    for body, field, message in [
        ({"temp": 1}, "temp", "not settable"),
        ({"nope": 1}, "nope", "No resource"),
        ({"setpoint": "hot"}, "setpoint", "not a number"),
        ({}, "non_field_errors", "at least one"),
    ]:
        response = api.patch(url, body, format="json")
        assert response.status_code == 400 and message in response.json()[field]
    assert AliasValue.objects.get(alias="setpoint").set == "23"
    assert Event.objects.filter(summary="Set setpoint=23", actor_email="alice@example.com").exists()


def test_set_from_the_device_page(device, browser_client, connector):
    url = reverse("device-detail", args=[connector.id, "d1"])
    page = browser_client.get(url).content.decode()
    assert "<option>setpoint</option>" in page and "<option>temp</option>" not in page
    browser_client.post(url, {"action": "set", "alias": "setpoint", "value": "24"})
    assert AliasValue.objects.get(alias="setpoint").set == "24"
    browser_client.post(url, {"action": "set", "alias": "setpoint", "value": "warm"})
    assert AliasValue.objects.get(alias="setpoint").set == "24"
