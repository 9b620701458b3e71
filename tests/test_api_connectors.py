"""Management API: connectors and the settings JSON (SPEC.md section 5)."""

import re

import pytest

from connector.models import ClientCA, Connector, Event
from tests.certs import make_cert, pem


def settings_url(connector_id):
    return f"/api:1/service/{connector_id}/device2"


def test_create_list_get_rename_delete(api, alice):
    response = api.post("/api:1/connector/", {"name": "Sensors"}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert re.fullmatch(r"[a-z0-9]{14,20}", body["id"])
    assert body == {"id": body["id"], "name": "Sensors", "fqdn": f"{body['id']}.localhost"}
    assert api.get("/api:1/connector/").json() == [body]
    assert api.get(f"/api:1/connector/{body['id']}").json() == body
    renamed = api.patch(f"/api:1/connector/{body['id']}", {"name": "Sensors 2"}, format="json")
    assert renamed.status_code == 200 and renamed.json()["name"] == "Sensors 2"
    assert api.delete(f"/api:1/connector/{body['id']}").status_code == 204
    assert not Connector.objects.exists()


@pytest.mark.parametrize(
    "payload",
    [{}, {"name": ""}, {"name": "   "}, {"name": "x" * 101}, [], {"name": 12}, {"name": None}],
)
def test_create_with_bad_name_is_400_naming_the_field(api, payload):
    response = api.post("/api:1/connector/", payload, format="json")
    assert response.status_code == 400
    assert "name" in response.json()
    assert not Connector.objects.exists()


def test_an_unknown_field_is_400_and_creates_nothing(api):
    response = api.post("/api:1/connector/", {"name": "A", "colour": "red"}, format="json")
    assert response.status_code == 400 and response.json() == {"colour": "Unknown field."}
    assert not Connector.objects.exists()


def test_other_users_connector_is_404_everywhere(api, bobs_connector):
    cid = bobs_connector.id
    assert api.get(f"/api:1/connector/{cid}").status_code == 404
    assert api.patch(f"/api:1/connector/{cid}", {"name": "x"}, format="json").status_code == 404
    assert api.delete(f"/api:1/connector/{cid}").status_code == 404
    assert api.get(settings_url(cid)).status_code == 404
    assert (
        api.patch(settings_url(cid), {"protocol": {"devmode": True}}, format="json").status_code
        == 404
    )
    assert api.get("/api:1/connector/").json() == []
    bobs_connector.refresh_from_db()
    assert not bobs_connector.devmode


def test_settings_json_has_murano_shape(api, connector):
    response = api.get(settings_url(connector.id))
    assert response.status_code == 200
    assert response.json() == {
        "fqdn": f"{connector.id}.localhost",
        "protocol": {"name": "onep:v1/http", "devmode": False},
        "provisioning": {
            "enabled": True,
            "auth_type": "token",
            "presenter_identity": False,
            "ip_whitelisting": {"enabled": False, "allowed": []},
            "activation_period_hours": 48,
        },
        "identity_format": {
            "prefix": "",
            "type": "opaque",
            "options": {"casing": "mixed", "length": 0},
        },
        "pki": {"enabled": False, "client_ca": [], "vendor": {"name": None, "options": {}}},
        "resources": {},
        "events": {"types": [], "subscriptions": 0},
    }


def test_patch_is_partial_and_logged(api, connector):
    response = api.patch(
        settings_url(connector.id),
        {"identity_format": {"type": "base10", "options": {"length": 8}}},
        format="json",
    )
    assert response.status_code == 204
    connector.refresh_from_db()
    assert (connector.id_type, connector.id_length, connector.auth_type) == ("base10", 8, "token")
    event = Event.objects.get(type="settings_changed")
    assert event.actor_email == "alice@example.com"
    body = api.get(settings_url(connector.id)).json()
    assert body["identity_format"]["options"] == {"casing": "mixed", "length": 8}


def test_patch_every_setting(api, connector):
    cert, _ = make_cert("API CA", ca=True)
    patch = {
        "protocol": {"devmode": True},
        "provisioning": {
            "enabled": False,
            "auth_type": "certificate",
            "presenter_identity": True,
            "ip_whitelisting": {"enabled": True, "allowed": ["203.0.113.0/24", "2001:db8::1"]},
            "activation_period_hours": 24,
        },
        "identity_format": {
            "prefix": "CC3220-",
            "type": "mac:colon",
            "options": {"casing": "upper", "length": 0},
        },
        "pki": {
            "enabled": True,
            "client_ca": [pem(cert)],
            "vendor": {
                "name": "digicert",
                "options": {
                    "profile_name": "p1",
                    "api_key": "secret-key-value",
                    "validity_months": 12,
                },
            },
        },
    }
    assert api.patch(settings_url(connector.id), patch, format="json").status_code == 204
    body = api.get(settings_url(connector.id)).json()
    assert body["protocol"]["devmode"] is True
    assert body["provisioning"] == {
        **patch["provisioning"],
        "ip_whitelisting": {"enabled": True, "allowed": ["203.0.113.0/24", "2001:db8::1"]},
    }
    assert body["identity_format"] == patch["identity_format"]
    assert body["pki"]["client_ca"] == [pem(cert)]
    assert body["pki"]["vendor"] == {
        "name": "digicert",
        "options": {"profile_name": "p1", "validity_months": 12, "api_key_set": True},
    }
    assert "secret-key-value" not in str(body)


@pytest.mark.parametrize(
    ("patch", "path", "message"),
    [
        (
            {"provisioning": {"ip_whitelisting": {"enabled": True, "allowed": ["10.0.0.0/33"]}}},
            "provisioning.ip_whitelisting.allowed",
            "Entry 1",
        ),
        (
            {"provisioning": {"ip_whitelisting": {"allowed": "10.0.0.0/8"}}},
            "provisioning.ip_whitelisting.allowed",
            "a list",
        ),
        (
            {"provisioning": {"ip_whitelisting": {"allowed": [5]}}},
            "provisioning.ip_whitelisting.allowed",
            "not text",
        ),
        ({"provisioning": {"auth_type": "magic"}}, "provisioning.auth_type", "valid choice"),
        ({"provisioning": {"enabled": "yes"}}, "provisioning.enabled", "true or false"),
        (
            {"provisioning": {"activation_period_hours": True}},
            "provisioning.activation_period_hours",
            "whole number",
        ),
        (
            {"provisioning": {"activation_period_hours": 0}},
            "provisioning.activation_period_hours",
            "greater than or equal to 1",
        ),
        (
            {"identity_format": {"type": "uuid_v4", "options": {"length": 10}}},
            "identity_format.options.length",
            "always 36",
        ),
        ({"identity_format": {"prefix": "a b"}}, "identity_format.prefix", "space"),
        ({"identity_format": {"colour": "red"}}, "identity_format.colour", "Unknown setting"),
        ({"bogus": 1}, "bogus", "Unknown setting"),
        ({"fqdn": "evil.example.com"}, "fqdn", "read-only"),
        ({"protocol": {"name": "mqtt"}}, "protocol.name", "not one of the available choices"),
        ({"pki": {"enabled": True}}, "pki.client_ca", "at least one client CA"),
        ({"pki": {"client_ca": ["garbage"]}}, "pki.client_ca", "No PEM certificate"),
        ({"pki": {"vendor": {"name": "digicert"}}}, "pki.vendor.options.profile_name", "profile"),
        ({"resources": {"temp": {"format": "color"}}}, "resources", "temp.format"),
        ({"resources": {"bad alias": {}}}, "resources", "an alias is"),
        ({"resources": ["temp"]}, "resources", "an object"),
    ],
)
def test_bad_settings_are_400_naming_the_field_and_nothing_changes(
    api, connector, patch, path, message
):
    # Bundle a valid change: it must not be applied either.
    body = {**patch, "protocol": {**patch.get("protocol", {}), "devmode": True}}
    response = api.patch(settings_url(connector.id), body, format="json")
    assert response.status_code == 400
    assert message in response.json()[path]
    connector.refresh_from_db()
    assert not connector.devmode
    assert not Event.objects.filter(type="settings_changed").exists()


def test_protocol_name_turns_mqtt_on_and_off(api, connector):
    """`protocol.name` is Murano's switch for the MQTT Device API (SPEC.md section 8)."""
    url = settings_url(connector.id)
    response = api.patch(url, {"protocol": {"name": "murano:v1/mqtt"}}, format="json")
    assert response.status_code == 204
    assert api.get(url).json()["protocol"]["name"] == "murano:v1/mqtt"
    connector.refresh_from_db()
    assert connector.protocol_name == "murano:v1/mqtt"
    # Other settings sent without it leave it as it is.
    assert api.patch(url, {"protocol": {"devmode": True}}, format="json").status_code == 204
    assert api.get(url).json()["protocol"] == {"name": "murano:v1/mqtt", "devmode": True}
    api.patch(url, {"protocol": {"name": "onep:v1/http"}}, format="json")
    connector.refresh_from_db()
    assert connector.protocol_name == "onep:v1/http"


@pytest.mark.parametrize("body", ['"a string"', "[1, 2]", "{not json"])
def test_non_object_body_is_400(api, connector, body):
    response = api.generic(
        "PATCH", settings_url(connector.id), body, content_type="application/json"
    )
    assert response.status_code == 400


def test_client_ca_list_replaces_the_stored_list(api, connector):
    one, _ = make_cert("CA one", ca=True)
    two, _ = make_cert("CA two", ca=True)
    api.patch(
        settings_url(connector.id),
        {"pki": {"enabled": True, "client_ca": [pem(one)]}},
        format="json",
    )
    api.patch(
        settings_url(connector.id), {"pki": {"client_ca": [pem(one), pem(two)]}}, format="json"
    )
    assert ClientCA.objects.count() == 2
    response = api.patch(
        settings_url(connector.id), {"pki": {"client_ca": [pem(two)]}}, format="json"
    )
    assert response.status_code == 204
    assert list(ClientCA.objects.values_list("subject", flat=True)) == ["CN=CA two,O=Test Factory"]


def test_same_settings_from_ui_and_api_are_the_same(api, browser_client, connector, alice):
    """One validation: the API and the page refuse and accept the same values."""
    from connector.services import create_connector

    other = create_connector(alice, "second")
    api.patch(
        settings_url(connector.id),
        {"identity_format": {"type": "mac:none", "options": {"casing": "lower"}}},
        format="json",
    )
    browser_client.post(
        f"/c/{other.id}/",
        {
            "auth_type": "token",
            "provisioning_enabled": "on",
            "activation_period_hours": "48",
            "id_type": "mac:none",
            "id_casing": "lower",
        },
    )
    a, b = (api.get(settings_url(c.id)).json() for c in (connector, other))
    assert a["identity_format"] == b["identity_format"]
