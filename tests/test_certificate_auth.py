"""Device authentication by TLS client certificate, as forwarded by the TLS terminator.

The terminator is simulated at the app boundary here (headers from a trusted proxy address);
the tests through real nginx belong to the TLS issue.
"""

import datetime as dt
from urllib.parse import quote

import pytest
import time_machine

from connector.models import ClientCA, Event
from devices import services as device_services
from devices.models import AliasValue, Device
from tests.certs import make_cert, pem
from tests.device_client import DeviceClient


@pytest.fixture
def cert_connector(connector):
    connector.auth_type, connector.id_type, connector.id_length = "certificate", "base10", 8
    connector.save()
    return connector


def via_proxy(connector, *certs, ip="127.0.0.1", proto="https"):
    """A device request as nginx forwards it: peer is the proxy, the cert is URL-escaped."""
    dev = DeviceClient(connector, secure=False, ip=ip)
    headers = {"HTTP_X_FORWARDED_PROTO": proto, "HTTP_X_FORWARDED_FOR": "198.51.100.77"}
    if certs:
        headers["HTTP_X_SSL_CLIENT_CERT"] = quote("".join(pem(c) for c in certs))
    return dev, headers


def write(connector, *certs, body="myalias=55", **kw):
    dev, headers = via_proxy(connector, *certs, **kw)
    return dev.post("/onep:v1/stack/alias", body, **headers)


def test_tutorial_self_signed_certificate_provisions_on_first_write(cert_connector):
    from tests.conftest import define

    define(cert_connector, "myalias")
    device_services.whitelist_device(cert_connector, "00000002")
    cert, _ = make_cert("00000002")
    assert write(cert_connector, cert).status_code == 204
    device = Device.objects.get()
    assert device.status == "provisioned" and device.auth_type == "certificate"
    assert device.cert_pem == pem(cert)
    types = list(Event.objects.filter(identity="00000002").values_list("type", flat=True))
    assert types[-2:] == ["provisioned", "data_in"]  # a provision event, then the write
    assert write(cert_connector, cert, body="myalias=56").status_code == 204
    assert AliasValue.objects.get().reported == "56"
    assert Device.objects.get().activity.last_ip == "198.51.100.77"


def test_another_certificate_for_a_provisioned_identity_is_401(cert_connector):
    device_services.whitelist_device(cert_connector, "00000002")
    first, _ = make_cert("00000002")
    write(cert_connector, first)
    second, _ = make_cert("00000002")
    assert write(cert_connector, second).status_code == 401
    assert Event.objects.filter(type="auth_failed").exists()


def test_whitelisted_certificate_must_match(cert_connector):
    expected, _ = make_cert("00000003")
    device_services.whitelist_device(cert_connector, "00000003", cert_pem=pem(expected))
    impostor, _ = make_cert("00000003")
    assert write(cert_connector, impostor).status_code == 401
    assert write(cert_connector, expected).status_code == 204
    assert Device.objects.get().status == "provisioned"


def test_self_registration_by_certificate(cert_connector):
    cert, _ = make_cert("00000009")
    assert write(cert_connector, cert).status_code == 401  # not whitelisted, no self-registration
    cert_connector.presenter_identity = True
    cert_connector.save()
    assert write(cert_connector, cert).status_code == 204
    assert Device.objects.get().identity == "00000009"


def test_cn_must_fit_the_identity_format(cert_connector):
    cert_connector.presenter_identity = True
    cert_connector.save()
    cert, _ = make_cert("not-a-number")
    assert write(cert_connector, cert).status_code == 401
    assert not Device.objects.exists()


def test_expired_and_not_yet_valid_certificates_are_401(cert_connector):
    cert_connector.presenter_identity = True
    cert_connector.save()
    cert, _ = make_cert("00000004", not_before=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), days=30)
    with time_machine.travel("2026-03-01 00:00Z", tick=False):
        assert write(cert_connector, cert).status_code == 401
    with time_machine.travel("2025-12-31 00:00Z", tick=False):
        assert write(cert_connector, cert).status_code == 401
    with time_machine.travel("2026-01-15 00:00Z", tick=False):
        assert write(cert_connector, cert).status_code == 204


def test_header_from_an_untrusted_address_is_ignored(cert_connector):
    device_services.whitelist_device(cert_connector, "00000002")
    cert, _ = make_cert("00000002")
    response = write(cert_connector, cert, ip="198.51.100.5")  # not a trusted proxy
    assert response.status_code in (401, 403)
    assert Device.objects.get().status == "whitelisted"


def test_certificate_needs_tls(cert_connector):
    device_services.whitelist_device(cert_connector, "00000002")
    cert, _ = make_cert("00000002")
    assert write(cert_connector, cert, proto="http").status_code == 403


@pytest.fixture
def pki_connector(cert_connector):
    ca = make_cert("Factory CA", ca=True)
    cert_connector.pki_enabled = True
    cert_connector.save()
    ClientCA.objects.create(
        connector=cert_connector,
        pem=pem(ca[0]),
        fingerprint="f" * 64,
        subject="CN=Factory CA",
        not_after=ca[0].not_valid_after_utc,
    )
    return cert_connector, ca


def test_pki_first_contact_creates_and_provisions(pki_connector):
    connector, (ca_cert, ca_key) = pki_connector
    leaf, _ = make_cert("00000010", issuer_cert=ca_cert, issuer_key=ca_key)
    assert write(connector, leaf, ca_cert).status_code == 204  # cert sent with its CA
    device = Device.objects.get()
    assert device.identity == "00000010" and device.status == "provisioned"


def test_pki_refuses_another_ca_and_self_signed(pki_connector):
    connector, _ca = pki_connector
    other_ca = make_cert("Other CA", ca=True)
    stranger, _ = make_cert("00000011", issuer_cert=other_ca[0], issuer_key=other_ca[1])
    assert write(connector, stranger, other_ca[0]).status_code == 401
    self_signed, _ = make_cert("00000012")
    assert write(connector, self_signed).status_code == 401
    assert not Device.objects.exists()


def test_pki_rotation_to_a_newer_certificate_from_the_same_ca(pki_connector):
    connector, (ca_cert, ca_key) = pki_connector
    now = dt.datetime.now(dt.UTC)
    old, _ = make_cert(
        "00000013", issuer_cert=ca_cert, issuer_key=ca_key, not_before=now - dt.timedelta(days=10)
    )
    new, _ = make_cert(
        "00000013", issuer_cert=ca_cert, issuer_key=ca_key, not_before=now - dt.timedelta(days=1)
    )
    assert write(connector, old).status_code == 204
    assert write(connector, new).status_code == 204
    assert Device.objects.get().cert_pem == pem(new)
    assert write(connector, old).status_code == 401  # the older one no longer works
    assert Event.objects.filter(summary__startswith="Certificate of 00000013 rotated").exists()


def test_token_devices_keep_working_after_switching_to_certificates(connector):
    device_services.whitelist_device(connector, "tok-1")
    dev = DeviceClient(connector)
    token = dev.activate("tok-1").content.decode()
    connector.auth_type = "certificate"
    connector.save()
    assert dev.write(token, "a=1").status_code == 204


def test_locked_certificate_device_is_403(cert_connector):
    device_services.whitelist_device(cert_connector, "00000002")
    cert, _ = make_cert("00000002")
    write(cert_connector, cert)
    Device.objects.update(locked=True)
    assert write(cert_connector, cert).status_code == 403
