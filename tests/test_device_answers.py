"""What the device API tells people and devices: refused writes are logged with their reason,
recorded points are the latest value when they are newest, 401 answers say why in words that
tell nothing of any identity, and error texts name no library internals."""

import datetime as dt
import time
from urllib.parse import quote

import pytest

from connector.models import Event, EventType
from devices import services as device_services
from devices.models import AliasValue, DataPoint
from tests.certs import make_cert, pem
from tests.conftest import define
from tests.device_client import DeviceClient


@pytest.fixture
def dev(connector):
    define(connector, "note", temp={"format": "number"}, mode={"allowed": ["on", "off"]})
    connector.devmode = True
    connector.save()
    device_services.whitelist_device(connector, "dev-1")
    client = DeviceClient(connector)
    return client, client.activate("dev-1").content.decode()


def test_a_write_its_definition_refuses_is_400_and_logged_with_the_reason(dev):
    client, token = dev
    response = client.write(token, "temp=warm&note=x")
    assert response.status_code == 400 and b"temp" in response.content
    assert not AliasValue.objects.exists()  # nothing of the write, not even `note`
    refused = Event.objects.get(type=EventType.DATA_REFUSED)
    assert refused.identity == "dev-1"
    assert refused.payload["reason"] == response.content.decode()
    assert refused.payload["values"] == {"temp": "warm", "note": "x"}
    assert "Write refused" in refused.summary and "temp" in refused.summary
    assert not Event.objects.filter(type=EventType.DATA_IN).exists()


def test_a_record_its_definition_refuses_is_400_and_logged(dev):
    client, token = dev
    response = client.post(
        "/onep:v1/stack/record", "alias=mode&1700000000=maybe", HTTP_X_EXOSITE_CIK=token
    )
    assert response.status_code == 400
    assert Event.objects.get(type=EventType.DATA_REFUSED).payload["reason"].startswith("mode at")
    assert not DataPoint.objects.exists()


def test_a_recorded_point_is_the_latest_value_only_when_it_is_newest(dev):
    client, token = dev
    record = "/onep:v1/stack/record"
    now = int(time.time())
    # Recorded only: a read answers the newest point, not 204.
    assert (
        client.post(
            record, f"alias=temp&{now - 120}=18&{now - 60}=19", HTTP_X_EXOSITE_CIK=token
        ).status_code
        == 204
    )
    assert client.read(token, "temp").content == b"temp=19"
    # A write is newer than both points, and an older point recorded later does not hide it.
    assert client.write(token, "temp=20").status_code == 204
    assert (
        client.post(record, f"alias=temp&{now - 30}=17", HTTP_X_EXOSITE_CIK=token).status_code
        == 204
    )
    assert client.read(token, "temp").content == b"temp=20"
    # A point newer than the write is the latest value.
    assert (
        client.post(record, f"alias=temp&{now + 60}=21", HTTP_X_EXOSITE_CIK=token).status_code
        == 204
    )
    assert client.read(token, "temp").content == b"temp=21"
    stored = AliasValue.objects.get(alias="temp")
    assert stored.timestamp == (now + 60) * 1_000_000
    # The four points and the write are history, readable in time order.
    history = list(
        DataPoint.objects.filter(alias="temp").order_by("timestamp").values_list("value", flat=True)
    )
    assert history == ["18", "19", "17", "20", "21"]


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, b"no credentials"),
        ({"HTTP_AUTHORIZATION": "Bearer x"}, b"malformed credentials"),
        ({"HTTP_X_EXOSITE_CIK": "A" * 40}, b"unknown credentials"),
    ],
)
def test_401_says_why_in_one_line(dev, headers, reason):
    client, _token = dev
    response = client.post("/onep:v1/stack/alias", "note=1", **headers)
    assert (response.status_code, response.content) == (401, reason)
    assert b"\n" not in response.content


def certificate_write(connector, *certs):
    client = DeviceClient(connector, secure=False, ip="127.0.0.1")
    headers = {
        "HTTP_X_FORWARDED_PROTO": "https",
        "HTTP_X_SSL_CLIENT_CERT": quote("".join(pem(c) for c in certs)),
    }
    return client.post("/onep:v1/stack/alias", "note=1", **headers)


@pytest.fixture
def cert_connector(connector):
    connector.auth_type = "certificate"
    connector.save()
    return connector


def test_a_refused_certificate_says_so_without_telling_whether_the_identity_exists(cert_connector):
    device_services.whitelist_device(cert_connector, "known-1")
    first, _ = make_cert("known-1")
    assert certificate_write(cert_connector, first).status_code == 204
    other, _ = make_cert("known-1")
    stranger, _ = make_cert("unknown-1")
    wrong = certificate_write(cert_connector, other)  # not the certificate stored
    unknown = certificate_write(cert_connector, stranger)  # not whitelisted
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.content == unknown.content == b"the certificate is not accepted for this identity"
    reasons = Event.objects.filter(type=EventType.AUTH_FAILED).values_list("payload", flat=True)
    assert {r["reason"] for r in reasons} == {
        "the certificate is not the one stored",
        "identity is not whitelisted",
    }


def test_an_expired_certificate_is_401_with_its_reason(cert_connector):
    cert, _ = make_cert("old-1", not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC), days=30)
    response = certificate_write(cert_connector, cert)
    assert response.status_code == 401 and response.content.startswith(b"The certificate expired")


def test_a_certificate_from_another_ca_is_refused_in_plain_words(cert_connector):
    from connector.models import ClientCA

    ca_cert, _ca_key = make_cert("Factory CA", ca=True)
    ClientCA.objects.create(
        connector=cert_connector,
        pem=pem(ca_cert),
        fingerprint="f" * 64,
        subject="CN=Factory CA",
        not_after=ca_cert.not_valid_after_utc,
    )
    cert_connector.pki_enabled = True
    cert_connector.save()
    stranger, _ = make_cert("dev-9")  # self-signed: no chain to the connector's CA
    response = certificate_write(cert_connector, stranger)
    assert response.status_code == 401
    event = Event.objects.get(type=EventType.AUTH_FAILED)
    for text in (response.content.decode(), event.summary, event.payload["reason"]):
        assert "client CA" in text
        assert "<Certificate" not in text and "subject=" not in text and "Error" not in text


@pytest.mark.parametrize(
    "text",
    [
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----",
    ],
)
def test_an_invalid_ca_pem_is_refused_in_plain_words(api, connector, text):
    response = api.patch(
        f"/api:1/service/{connector.id}/device2",
        {"pki": {"client_ca": [text]}},
        format="json",
    )
    assert response.status_code == 400
    message = str(response.json())
    assert "could not be parsed" in message
    for internal in ("http", "InvalidData", "ASN.1", "(", "error"):
        assert internal not in message, message


def test_a_guesser_at_the_address_does_not_stop_a_certificate_or_token_device(
    cert_connector, settings
):
    settings.DEVICE_AUTH_FAILURE_LIMIT = 3
    device_services.whitelist_device(cert_connector, "fleet-1")
    honest, _ = make_cert("fleet-1")
    assert certificate_write(cert_connector, honest).status_code == 204
    for _ in range(3):  # a guesser behind the same address (the proxy's client address)
        stranger, _ = make_cert("fleet-1")
        assert certificate_write(cert_connector, stranger).status_code == 401
    stranger, _ = make_cert("fleet-1")
    assert certificate_write(cert_connector, stranger).status_code == 429
    assert certificate_write(cert_connector, honest).status_code == 204  # still works
