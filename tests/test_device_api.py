"""HTTP Device API (SPEC.md sections 2-3): provisioning, auth, write, read, hybrid, record."""

import time

import pytest
import time_machine
from django.db import connection

from connector.models import Event
from devices import services as device_services
from devices.models import AliasValue, DataPoint, Device
from provisioning.models import AuthFailure
from tests.conftest import define, statements_counted
from tests.device_client import DeviceClient, basic

PASSWORD = "a-password-of-24-bytes!!"


@pytest.fixture
def base10(connector):
    connector.id_type, connector.id_length = "base10", 8
    connector.save()
    define(connector, "myalias", "a", "b", "c", "d", "j", "temp", "hum", "setpoint", "t")
    return connector


@pytest.fixture
def dev(base10):
    return DeviceClient(base10)


@pytest.fixture
def token(base10, dev):
    device_services.whitelist_device(base10, "00000001")
    response = dev.activate("00000001")
    assert response.status_code == 200
    return response.content.decode()


def test_timestamp(dev):
    response = dev.get("/timestamp")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert abs(int(response.content) - time.time()) <= 2
    assert not response.content.endswith(b"\n")


def test_unknown_host_and_unknown_path_are_404(base10, client):
    for host in ("nosuchconnector1.localhost", "x.localhost", "a.b.localhost"):
        assert client.get("/timestamp", HTTP_HOST=host).status_code == 404
    assert DeviceClient(base10).get("/settings/").status_code == 404
    # The management UI is not reachable on a device host.
    assert DeviceClient(base10).get("/login/").status_code == 404


def test_token_activation(base10, dev):
    device_services.whitelist_device(base10, "00000001")
    response = dev.activate("00000001")
    assert response.status_code == 200
    token = response.content.decode()
    assert len(token) == 40 and token.isalnum()
    device = Device.objects.get()
    assert device.status == "provisioned" and device.auth_type == "token"
    assert token not in device.secret_hash
    assert device.activity.last_ip == "198.51.100.10"
    event = Event.objects.get(type="provisioned")
    assert event.identity == "00000001" and event.source_ip == "198.51.100.10"
    assert token not in str(event.payload) + event.summary


def test_legacy_sn_with_vendor_and_model(base10, dev):
    device_services.whitelist_device(base10, "00000001")
    response = dev.post("/provision/activate", "vendor=acme&model=m1&sn=00000001")
    assert response.status_code == 200


def test_password_activation_and_basic_auth(base10, dev):
    base10.auth_type = "password"
    base10.save()
    device_services.whitelist_device(base10, "00000001")
    assert dev.activate("00000001", PASSWORD).status_code == 204
    ok = dev.post(
        "/onep:v1/stack/alias", "myalias=50", HTTP_AUTHORIZATION=basic("00000001", PASSWORD)
    )
    assert ok.status_code == 204
    bad = dev.post(
        "/onep:v1/stack/alias", "myalias=50", HTTP_AUTHORIZATION=basic("00000001", PASSWORD + "x")
    )
    assert bad.status_code == 401


def test_password_auth_for_identities_with_colons(connector):
    connector.auth_type, connector.id_type = "password", "mac:colon"
    connector.save()
    dev = DeviceClient(connector)
    device_services.whitelist_device(connector, "00:14:22:01:23:45")
    assert dev.activate("00:14:22:01:23:45", "pass:with:colons:inside!").status_code == 204
    ok = dev.post(
        "/onep:v1/stack/alias",
        "a=1",
        HTTP_AUTHORIZATION=basic("00:14:22:01:23:45", "pass:with:colons:inside!"),
    )
    assert ok.status_code == 204


@pytest.mark.parametrize(
    ("setup", "request_kwargs", "status"),
    [
        ({}, {"identity": "12345678"}, 404),  # not whitelisted
        ({}, {"identity": "1234"}, 404),  # breaks the identity format
        ({"auth_type": "certificate"}, {}, 415),
        ({"auth_type": "password"}, {}, 415),  # no password sent
        ({"auth_type": "password"}, {"password": "short-password"}, 415),
        ({}, {"password": PASSWORD}, 415),  # password to a token connector
        ({"provisioning_enabled": False}, {}, 403),
        ({"ip_whitelisting_enabled": True, "ip_allowed": ["203.0.113.0/24"]}, {}, 403),
    ],
)
def test_activation_refusals(base10, dev, setup, request_kwargs, status):
    for name, value in setup.items():
        setattr(base10, name, value)
    base10.save()
    device_services.whitelist_device(base10, "00000001")
    response = dev.activate(
        request_kwargs.get("identity", "00000001"), request_kwargs.get("password")
    )
    assert response.status_code == status
    assert Device.objects.get().status == "whitelisted"
    assert Event.objects.filter(type="provision_failed").count() == 1


def test_allowed_ip_range_provisions(base10):
    base10.ip_whitelisting_enabled, base10.ip_allowed = True, ["203.0.113.0/24", "2001:db8::/32"]
    base10.save()
    device_services.whitelist_device(base10, "00000001")
    device_services.whitelist_device(base10, "00000002")
    assert DeviceClient(base10, ip="203.0.113.77").activate("00000001").status_code == 200
    assert DeviceClient(base10, ip="2001:db8::9").activate("00000002").status_code == 200


def test_allowed_ip_is_the_client_seen_through_trusted_proxies_only(base10):
    base10.ip_whitelisting_enabled, base10.ip_allowed = True, ["203.0.113.0/24"]
    base10.save()
    device_services.whitelist_device(base10, "00000001")
    forged = DeviceClient(base10, ip="198.51.100.3")
    assert forged.activate("00000001", HTTP_X_FORWARDED_FOR="203.0.113.5").status_code == 403
    proxied = DeviceClient(base10, ip="127.0.0.1")
    assert (
        proxied.activate(
            "00000001", HTTP_X_FORWARDED_FOR="203.0.113.5", HTTP_X_FORWARDED_PROTO="https"
        ).status_code
        == 200
    )


def test_already_provisioned_is_409_and_locked_is_403(base10, dev, token):
    assert dev.activate("00000001").status_code == 409
    Device.objects.update(locked=True)
    assert dev.activate("00000001").status_code == 403
    assert dev.write(token, "a=1").status_code == 403


def test_expired_activation_window_is_409(base10, dev):
    with time_machine.travel("2026-05-01 00:00Z", tick=False):
        device_services.whitelist_device(base10, "00000001")
    with time_machine.travel("2026-05-03 00:00:01Z", tick=False):
        assert dev.activate("00000001").status_code == 409
    assert Event.objects.filter(type="expired", identity="00000001").exists()


def test_self_registration(base10, dev):
    base10.presenter_identity = True
    base10.save()
    assert dev.activate("00000042").status_code == 200
    assert Device.objects.get().identity == "00000042"
    assert dev.activate("00000042").status_code == 409
    assert dev.activate("0000004").status_code == 404  # still must match the format


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        (None, 415),
        ("text/plain", 415),
        ("application/json", 415),
        ("application/x-www-form-urlencoded; charset=latin-1", 415),
        ("application/x-www-form-urlencoded", 200),
        ("Application/X-WWW-Form-Urlencoded; charset=UTF-8", 200),
    ],
)
def test_activation_content_type(base10, dev, content_type, status):
    device_services.whitelist_device(base10, "00000001")
    response = dev.post("/provision/activate", "id=00000001", content_type=content_type)
    assert response.status_code == status


def test_plain_http_is_refused_without_developer_mode(base10, settings):
    device_services.whitelist_device(base10, "00000001")
    plain = DeviceClient(base10, secure=False)
    assert plain.activate("00000001").status_code == 403
    assert plain.get("/timestamp").status_code == 200  # no secret involved
    base10.devmode = True
    base10.save()
    assert plain.activate("00000001").status_code == 200
    assert Device.objects.get().status == "devmode"


def test_reprovision_replaces_the_credential(base10, dev, token, alice):
    device = Device.objects.get()
    device_services.update_device(device, actor=alice, expire=0)
    assert dev.write(token, "a=1").status_code == 401  # revoked at once
    second = dev.activate("00000001")
    assert second.status_code == 200
    new_token = second.content.decode()
    assert new_token != token
    assert dev.write(new_token, "a=1").status_code == 204
    assert dev.write(token, "a=1").status_code == 401


def test_write_read_and_auth_forms(dev, token):
    assert dev.write(token, "myalias=50").status_code == 204
    assert (
        dev.post("/onep:v1/stack/alias", "b=2", HTTP_AUTHORIZATION=f"token {token}").status_code
        == 204
    )
    assert (
        dev.post("/onep:v1/stack/alias", "c=3", HTTP_AUTHORIZATION=f"TOKEN {token}").status_code
        == 204
    )
    assert (
        dev.post("/onep:v1/stack/alias", "d=4", HTTP_AUTHORIZATION=basic("", token)).status_code
        == 204
    )
    read = dev.read(token, "myalias&b&nothing&d")
    assert read.status_code == 200
    assert read.content == b"myalias=50&b=2&d=4"
    assert dev.read(token, "nothing").status_code == 204
    values = dict(AliasValue.objects.values_list("alias", "reported"))
    assert values == {"myalias": "50", "b": "2", "c": "3", "d": "4"}
    assert Event.objects.filter(type="data_in").count() == 4


def test_values_are_percent_decoded_or_taken_raw(dev, token):
    assert dev.write(token, "a=hello%20world&b=1%2B1&c=x+y").status_code == 204
    raw_json = '{"temp": 21.5, "note": "50% & more"}'.replace("&", "and")
    assert dev.write(token, f"j={raw_json}").status_code == 204
    values = dict(AliasValue.objects.values_list("alias", "reported"))
    assert values["a"] == "hello world" and values["b"] == "1+1" and values["c"] == "x y"
    assert values["j"] == raw_json
    read = dev.read(token, "j")
    from urllib.parse import unquote_plus

    assert unquote_plus(read.content.decode().split("=", 1)[1]) == raw_json


def test_hybrid_write_then_read(dev, token):
    dev.write(token, "setpoint=20")
    response = dev.post("/onep:v1/stack/alias?setpoint&temp", "temp=21", HTTP_X_EXOSITE_CIK=token)
    assert response.status_code == 200
    assert response.content == b"setpoint=20&temp=21"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"HTTP_X_EXOSITE_CIK": "short"}, 401),
        ({"HTTP_X_EXOSITE_CIK": "A" * 40}, 401),
        ({"HTTP_X_EXOSITE_CIK": "A" * 41}, 401),
        ({"HTTP_AUTHORIZATION": "Bearer " + "A" * 40}, 401),
        ({"HTTP_AUTHORIZATION": "Basic %%%"}, 401),
        ({"HTTP_AUTHORIZATION": basic("00000001", "A" * 40)}, 401),
    ],
)
def test_bad_credentials_are_401_with_nothing_stored(base10, dev, token, headers, status):
    response = dev.post("/onep:v1/stack/alias", "a=1", **headers)
    assert response.status_code == status
    # A one-line reason, and no hint whether the identity exists: a wrong password for an
    # identity that exists reads as one for an identity that does not.
    assert response.content in (b"no credentials", b"malformed credentials", b"unknown credentials")
    stranger = dev.post(
        "/onep:v1/stack/alias", "a=1", HTTP_AUTHORIZATION=basic("09999999", "x" * 40)
    )
    if (
        headers.get("HTTP_AUTHORIZATION", "").startswith("Basic ")
        and "%" not in headers["HTTP_AUTHORIZATION"]
    ):
        assert response.content == stranger.content == b"unknown credentials"
    assert not AliasValue.objects.exists()
    assert Event.objects.filter(type="auth_failed").exists()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "nothing to write"),
        ("=5", "empty alias"),
        ("a=1&a=2", "appears twice"),
        ("a=%zz", "bad percent-encoding"),
        (b"a=\xff\xfe", "not UTF-8"),
        ("a=%ff", "not UTF-8"),
        ("x" * 65 + "=1", "longer than 64"),
        ("a%01b=1", "control characters"),
    ],
)
def test_bad_writes_are_400_and_store_nothing(dev, token, body, message):
    response = dev.write(token, body)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not AliasValue.objects.exists()


def test_body_over_one_mebibyte_is_413(dev, token):
    response = dev.write(token, "a=" + "x" * (1024 * 1024))
    assert response.status_code == 413
    assert not AliasValue.objects.exists()


def test_write_needs_form_content_type(dev, token):
    assert dev.write(token, "a=1", content_type="application/json").status_code == 415


def test_read_without_aliases_is_400(dev, token):
    assert dev.get("/onep:v1/stack/alias", HTTP_X_EXOSITE_CIK=token).status_code == 400


def test_record_and_conflicts(dev, token):
    record = "/onep:v1/stack/record"
    ok = dev.post(
        record,
        "alias=temp&1700000000=20&1700000060=21&alias=hum&1700000000=40",
        HTTP_X_EXOSITE_CIK=token,
    )
    assert ok.status_code == 204
    assert DataPoint.objects.count() == 3
    clash = dev.post(
        record,
        "alias=temp&1700000060=22&1700000120=23&alias=hum&1700000000=41",
        HTTP_X_EXOSITE_CIK=token,
    )
    assert clash.status_code == 409
    assert clash.content == b"temp=1700000060&hum=1700000000"
    assert DataPoint.objects.count() == 3  # nothing from the refused request
    assert Event.objects.filter(type="record").count() == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("1700000000=1", "before any alias"),
        ("alias=t&abc=1", "not whole unix seconds"),
        ("alias=t&1.5=1", "not whole unix seconds"),
        ("alias=t&-5=1", "not whole unix seconds"),
        ("alias=t&99999999999=1", "in the future"),
        ("alias=t&1700000000=1&1700000000=2", "twice"),
        ("alias=t", "no timestamp=value"),
        ("", "nothing to record"),
    ],
)
def test_bad_records_are_400(dev, token, body, message):
    response = dev.post("/onep:v1/stack/record", body, HTTP_X_EXOSITE_CIK=token)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not DataPoint.objects.exists()


@pytest.mark.parametrize("identity", ["0000 001", "00000001\x00", "0000000\n", " 00000001"])
def test_activation_with_spaces_or_control_characters_is_404(base10, dev, identity):
    from urllib.parse import quote

    device_services.whitelist_device(base10, "00000001")
    response = dev.post("/provision/activate", "id=" + quote(identity))
    assert response.status_code == 404
    assert Device.objects.get().status == "whitelisted"


def test_activation_without_id_is_400(dev):
    assert dev.post("/provision/activate", "model=x").status_code == 400


def test_repeated_failures_are_slowed_down(base10, dev, settings):
    settings.DEVICE_AUTH_FAILURE_LIMIT = 3
    device_services.whitelist_device(base10, "00000001")
    for _ in range(3):
        assert dev.write("B" * 40, "a=1").status_code == 401
    limited = dev.write("B" * 40, "a=1")
    assert limited.status_code == 429
    assert 0 < int(limited["Retry-After"]) <= 60
    # A device with a valid token keeps working beside the guesser: a token cannot be
    # guessed. Activations (an identity is what is guessed) stay limited.
    token = DeviceClient(base10, ip="203.0.113.1").activate("00000001").content.decode()
    assert dev.write(token, "a=1").status_code == 204
    assert dev.activate("00000009").status_code == 429
    # Other addresses are not affected.
    assert DeviceClient(base10, ip="203.0.113.1").write(token, "a=1").status_code == 204
    assert AuthFailure.objects.get(ip="198.51.100.10").count >= 3


def test_failure_window_passes(base10, dev, settings):
    settings.DEVICE_AUTH_FAILURE_LIMIT = 2
    with time_machine.travel("2026-05-01 00:00:05Z", tick=False):
        for _ in range(3):
            dev.write("C" * 40, "a=1")
        assert dev.write("C" * 40, "a=1").status_code == 429
    with time_machine.travel("2026-05-01 00:01:05Z", tick=False):
        assert dev.write("C" * 40, "a=1").status_code == 401


@pytest.fixture
def fresh_device(transactional_db, connector):
    device_services.whitelist_device(connector, "dev-1")
    dev = DeviceClient(connector)
    return dev, dev.activate("dev-1").content.decode()


def test_authenticated_write_uses_at_most_four_queries(fresh_device):
    """Auth lookup (device, connector, activity and failure count in one query), values upsert,
    event insert; plus the last-seen upsert when it is due (at most once a minute). On
    PostgreSQL all of it is one statement; on SQLite they run in one transaction, whose
    BEGIN and COMMIT are not counted (in-process calls, not round trips)."""
    dev, token = fresh_device
    most = 1 if connection.vendor == "postgresql" else 3
    with statements_counted() as done:
        assert dev.write(token, "temp=21&hum=40").status_code == 204
    assert len(done) <= most, done
    with time_machine.travel(time.time() + 120):  # last seen is due again
        with statements_counted() as done:
            assert dev.write(token, "temp=22").status_code == 204
    assert len(done) <= (1 if connection.vendor == "postgresql" else 4), done


def test_last_seen_is_refreshed_at_most_once_a_minute(fresh_device):
    from devices.models import DeviceActivity

    dev, token = fresh_device
    first = DeviceActivity.objects.get().last_seen
    dev.write(token, "a=1")
    assert DeviceActivity.objects.get().last_seen == first
    with time_machine.travel(time.time() + 61):
        dev.write(token, "a=2")
    assert DeviceActivity.objects.get().last_seen > first


def test_nul_characters_are_refused_not_500(dev, token):
    assert dev.write(token, "a=x%00y").status_code == 400
    assert (
        dev.post(
            "/onep:v1/stack/record", "alias=t&1700000000=%00", HTTP_X_EXOSITE_CIK=token
        ).status_code
        == 400
    )
    assert not AliasValue.objects.exists()


def test_token_lookup_uses_the_secret_index(dev, token):
    """Regression: without it SQLite walked every device of the connector on each request."""
    from django.db import connection

    from provisioning.auth import lookup_sql, token_where

    if connection.vendor != "sqlite":
        pytest.skip("SQLite's planner is the one that chose the wrong index")
    sql = lookup_sql(token_where(1))
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + sql, ["c", "token", "1$x"])
        plan = " ".join(str(row) for row in cursor.fetchall())
    assert "device_secret" in plan


def test_management_host_under_the_device_domain_stays_the_management_ui(client, settings):
    settings.DEVICE_API_DOMAIN = "example.com"
    settings.ALLOWED_HOSTS = ["connector.example.com", ".example.com"]
    settings.MANAGEMENT_HOSTS = frozenset({"connector.example.com"})
    response = client.get("/login/", HTTP_HOST="connector.example.com")
    assert response.status_code == 200 and b"Sign in" in response.content
    assert client.get("/login/", HTTP_HOST="other.example.com").status_code == 404
