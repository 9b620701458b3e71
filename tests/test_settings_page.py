"""The Settings tab: one form, validated as a whole, errors next to fields, changes logged."""

import datetime as dt

import pytest
from django.urls import reverse

from connector.models import ClientCA, Connector, Event
from tests.certs import key_pem, make_cert, pem


def form_data(connector: Connector, **changes) -> dict:
    """What the browser posts for the page as rendered, with some fields changed."""
    data = {
        "auth_type": connector.auth_type,
        "provisioning_enabled": "on" if connector.provisioning_enabled else "",
        "activation_period_hours": str(connector.activation_period_hours),
        "id_prefix": connector.id_prefix,
        "id_type": connector.id_type,
        "id_length": "" if connector.id_length is None else str(connector.id_length),
        "id_casing": connector.id_casing,
        "ip_allowed": "\n".join(connector.ip_allowed),
        "vendor_name": connector.vendor_name,
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v != ""}


def save(client, connector, **changes):
    return client.post(
        reverse("connector-settings", args=[connector.id]), form_data(connector, **changes)
    )


def test_page_shows_every_section_and_setting(browser_client, connector):
    page = browser_client.get(reverse("connector-settings", args=[connector.id])).content.decode()
    for text in (
        "Protocol",
        "Provisioning",
        "Identity format",
        "Public Key Infrastructure",
        "Enable Developer Mode",
        "Allow devices to register their own identity",
        "Restrict IP addresses",
        "Activation period",
        "Prefix",
        "Length",
        "Casing",
        "Enable PKI",
        "Validator vendor",
        "DigiCert",
        "TLS client certificate",
        "Password",
    ):
        assert text in page, text
    assert 'value="48"' in page  # default activation period


def test_defaults_match_murano(connector):
    assert connector.auth_type == "token"
    assert connector.provisioning_enabled and not connector.presenter_identity
    assert not connector.devmode and not connector.ip_whitelisting_enabled
    assert connector.activation_period_hours == 48
    assert connector.id_type == "opaque" and connector.id_length is None


def test_tutorial_identity_format_is_saved_and_logged(browser_client, connector):
    response = save(browser_client, connector, id_type="base10", id_length="8")
    assert response.status_code == 302
    connector.refresh_from_db()
    assert (connector.id_type, connector.id_length) == ("base10", 8)
    event = Event.objects.get(connector=connector, type="settings_changed")
    assert event.actor_email == "alice@example.com"
    assert event.payload["id_type"] == {"from": "opaque", "to": "base10"}
    assert event.payload["id_length"] == {"from": None, "to": 8}
    page = browser_client.get(reverse("connector-settings", args=[connector.id])).content.decode()
    assert "Settings saved." in page


def test_saving_unchanged_settings_records_nothing(browser_client, connector):
    save(browser_client, connector)
    assert not Event.objects.filter(type="settings_changed").exists()


def test_every_protocol_and_provisioning_setting_is_kept(browser_client, connector):
    save(
        browser_client,
        connector,
        auth_type="password",
        devmode="on",
        provisioning_enabled="",
        presenter_identity="on",
        ip_whitelisting_enabled="on",
        ip_allowed="203.0.113.0/24\n198.51.100.7, 2001:db8::/32",
        activation_period_hours="72",
        id_prefix="SN-",
        id_type="base16",
        id_casing="upper",
    )
    connector.refresh_from_db()
    assert connector.auth_type == "password"
    assert connector.devmode and connector.presenter_identity
    assert not connector.provisioning_enabled
    assert connector.ip_whitelisting_enabled
    assert connector.ip_allowed == ["203.0.113.0/24", "198.51.100.7", "2001:db8::/32"]
    assert connector.activation_period_hours == 72
    assert (connector.id_prefix, connector.id_type, connector.id_casing) == (
        "SN-",
        "base16",
        "upper",
    )


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        (
            {"ip_whitelisting_enabled": "on", "ip_allowed": "10.0.0.0/8\n10.0.0.300"},
            "ip_allowed",
            "Entry 2 “10.0.0.300” is not an IP address",
        ),
        (
            {"ip_whitelisting_enabled": "on", "ip_allowed": "10.0.0.1/8"},
            "ip_allowed",
            "did you mean 10.0.0.0/8",
        ),
        (
            {"ip_whitelisting_enabled": "on", "ip_allowed": "2001:db8::/129"},
            "ip_allowed",
            "Entry 1",
        ),
        ({"ip_whitelisting_enabled": "on", "ip_allowed": ""}, "ip_allowed", "at least one"),
        ({"activation_period_hours": "0"}, "activation_period_hours", "greater than or equal to 1"),
        ({"activation_period_hours": "abc"}, "activation_period_hours", "whole number"),
        ({"id_type": "uuid_v4", "id_length": "8"}, "id_length", "always 36"),
        ({"id_prefix": "S N"}, "id_prefix", "space"),
        ({"id_type": "base64"}, "id_type", "valid choice"),
        ({"auth_type": "magic"}, "auth_type", "valid choice"),
        ({"id_length": "-3"}, "id_length", "greater than or equal to 0"),
    ],
)
def test_bad_values_are_shown_next_to_their_field_and_nothing_is_saved(
    browser_client, connector, changes, field, message
):
    # A valid change in the same submission must not be saved either.
    response = save(browser_client, connector, **{"auth_type": "password", **changes})
    assert response.status_code == 400
    errors = " ".join(response.context["form"].errors[field])
    assert message in errors
    html = response.content.decode()
    assert f'id="field-{field}"' in html and f'id="id_{field}_error"' in html
    assert "Nothing was saved" in html
    connector.refresh_from_db()
    assert connector.auth_type == "token"
    assert not Event.objects.filter(type="settings_changed").exists()


def ca_pem(cn="Factory CA", **kw):
    cert, _key = make_cert(cn, ca=True, **kw)
    return pem(cert), cert


def test_client_ca_is_parsed_and_shown_by_subject_expiry_fingerprint(browser_client, connector):
    text, cert = ca_pem()
    response = save(browser_client, connector, pki_enabled="on", client_ca_add=text)
    assert response.status_code == 302
    ca = ClientCA.objects.get(connector=connector)
    assert ca.subject == "CN=Factory CA,O=Test Factory"
    page = browser_client.get(reverse("connector-settings", args=[connector.id])).content.decode()
    assert "CN=Factory CA,O=Test Factory" in page
    assert cert.not_valid_after_utc.strftime("%Y-%m-%d") in page
    assert ca.fingerprint_display in page
    connector.refresh_from_db()
    assert connector.pki_enabled


def test_several_cas_at_once_and_removal(browser_client, connector):
    (a, _), (b, _) = ca_pem("CA one"), ca_pem("CA two")
    save(browser_client, connector, pki_enabled="on", client_ca_add=a + b)
    assert ClientCA.objects.filter(connector=connector).count() == 2
    first = ClientCA.objects.get(subject__startswith="CN=CA one")
    save(browser_client, connector, pki_enabled="on", client_ca_remove=[first.fingerprint])
    assert list(ClientCA.objects.values_list("subject", flat=True)) == ["CN=CA two,O=Test Factory"]


def test_removing_the_last_ca_while_pki_is_on_is_refused(browser_client, connector):
    text, _ = ca_pem()
    save(browser_client, connector, pki_enabled="on", client_ca_add=text)
    fp = ClientCA.objects.get().fingerprint
    response = save(browser_client, connector, pki_enabled="on", client_ca_remove=[fp])
    assert "at least one client CA" in " ".join(response.context["form"].errors["client_ca_add"])
    assert ClientCA.objects.count() == 1


def expired_ca():
    cert, _ = make_cert(
        "Old CA", ca=True, not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC), days=30
    )
    return pem(cert)


def leaf_pem():
    cert, _ = make_cert("00000001")
    return pem(cert)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello", "No PEM certificate found"),
        ("-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----", "cut off"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----", "could not be parsed"),
        ("-----BEGIN CERTIFICATE-----\nMIIB", "cut off"),
        (None, "private key"),
        ("expired", "expired on 2020-01-31"),
        ("leaf", "not a CA certificate"),
    ],
)
def test_bad_ca_pem_is_refused_with_a_clear_message(browser_client, connector, text, message):
    if text is None:
        text = key_pem(make_cert("x")[1])
    elif text == "expired":
        text = expired_ca()
    elif text == "leaf":
        text = leaf_pem()
    response = save(browser_client, connector, pki_enabled="on", client_ca_add=text)
    assert response.status_code == 400
    assert message in " ".join(response.context["form"].errors["client_ca_add"])
    assert not ClientCA.objects.exists()


def test_same_ca_twice_is_refused(browser_client, connector):
    text, _ = ca_pem()
    save(browser_client, connector, pki_enabled="on", client_ca_add=text)
    response = save(browser_client, connector, pki_enabled="on", client_ca_add=text)
    assert "already a client CA" in response.content.decode()


def test_digicert_needs_its_options_and_never_shows_the_api_key(browser_client, connector):
    text, _ = ca_pem()
    response = save(
        browser_client, connector, pki_enabled="on", client_ca_add=text, vendor_name="digicert"
    )
    errors = response.context["form"].errors
    assert {"digicert_profile", "digicert_api_key", "digicert_validity_months"} <= set(errors)
    secret = "dc-api-key-0123456789abcdef"
    response = save(
        browser_client,
        connector,
        pki_enabled="on",
        client_ca_add=text,
        vendor_name="digicert",
        digicert_profile="Device profile",
        digicert_api_key=secret,
        digicert_validity_months="12",
    )
    assert response.status_code == 302
    connector.refresh_from_db()
    assert connector.vendor_options == {"profile_name": "Device profile", "validity_months": 12}
    assert connector.vendor_api_key_encrypted and secret not in connector.vendor_api_key_encrypted
    page = browser_client.get(reverse("connector-settings", args=[connector.id])).content.decode()
    assert secret not in page and "An API key is stored" in page
    event = Event.objects.get(type="settings_changed")
    assert secret not in str(event.payload) and event.payload["vendor_api_key"] == {"changed": True}
    # Saving again without retyping the key keeps it.
    response = save(
        browser_client,
        connector,
        pki_enabled="on",
        vendor_name="digicert",
        digicert_profile="Device profile",
        digicert_validity_months="24",
    )
    assert response.status_code == 302
    from connector import keys

    connector.refresh_from_db()
    assert keys.decrypt(connector.vendor_api_key_encrypted) == secret


def test_another_users_settings_cannot_be_saved(browser_client, bobs_connector):
    response = save(browser_client, bobs_connector, auth_type="password")
    assert response.status_code == 404
    bobs_connector.refresh_from_db()
    assert bobs_connector.auth_type == "token"
