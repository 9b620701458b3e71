"""Real clients against a live server on loopback: Exosite's gdc and the tutorial's curl."""

import base64
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from connector.models import Event, User
from connector.services import create_connector
from devices import services as device_services
from devices.models import AliasValue, DataPoint
from tests.conftest import PASSWORD, define, require

GDC = Path(__file__).parent / "gdc_run.py"
FORM = "Content-Type: application/x-www-form-urlencoded; charset=utf-8"


@pytest.fixture
def live_connector(live_server, transactional_db):
    user = User.objects.create_user("maker@example.com", PASSWORD)
    connector = create_connector(user, "Tutorial")
    connector.id_type, connector.id_length = "base10", 8
    connector.devmode = True  # the live test server speaks plain HTTP
    connector.save()
    define(connector, "myalias", "config", "temp")
    port = urlsplit(live_server.url).port
    return connector, f"http://{connector.id}.localhost:{port}"


def gdc(host: str, *args: str) -> str:
    try:
        import murano_client  # noqa: F401
    except ImportError:
        require(False, "murano-client is not installed (requirements-dev.txt)")
    result = subprocess.run(
        [sys.executable, str(GDC), "-H", host + "/", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_gdc_timestamp_activate_write_read_record(live_connector):
    import time

    connector, host = live_connector
    device_services.whitelist_device(connector, "00000001")
    assert abs(int(gdc(host, "http", "timestamp").split()[-1]) - time.time()) < 5
    token = gdc(host, "-u", "00000001", "http", "activate")
    assert len(token) == 40 and token.isalnum()
    assert gdc(host, "-k", token, "http", "write", "myalias", "50") == "[204] No content"
    raw_json = '{"temp":21.5,"unit":"C"}'
    assert gdc(host, "-k", token, "http", "write", "config", raw_json) == "[204] No content"
    assert AliasValue.objects.get(alias="config").reported == raw_json
    assert gdc(host, "-k", token, "http", "read", "myalias") == "[200] myalias=50"
    assert gdc(host, "-k", token, "http", "read", "nothing") == "[204] No Content"
    assert (
        gdc(host, "-k", token, "http", "record", "1700000000", "temp", "20.5") == "[204] No content"
    )
    assert DataPoint.objects.get(timestamp=1_700_000_000_000_000).value == "20.5"
    assert "[409]" in gdc(host, "-k", token, "http", "record", "1700000000", "temp", "9")
    assert (
        gdc(host, "-k", "X" * 40, "http", "write", "myalias", "1") == "[401] No or invalid TOKEN."
    )
    # A second activation of the same identity is refused.
    assert "409" in gdc(host, "-u", "00000001", "http", "activate")


def curl(*args: str) -> subprocess.CompletedProcess:
    if not shutil.which("curl"):
        require(False, "curl is not installed")
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=30)


def test_tutorial_token_section_verbatim(live_connector):
    connector, fqdn = live_connector
    device_services.whitelist_device(connector, "00000001")
    token = curl("-X", "POST", f"{fqdn}/provision/activate", "-H", FORM, "-d", "id=00000001").stdout
    assert len(token) == 40
    write = curl(
        "-i",
        "-X",
        "POST",
        f"{fqdn}/onep:v1/stack/alias",
        "-H",
        f"X-Exosite-CIK: {token}",
        "-H",
        FORM,
        "-d",
        "myalias=50",
    )
    assert write.stdout.startswith("HTTP/1.1 204")
    types = list(Event.objects.filter(identity="00000001").values_list("type", flat=True))
    assert types[-2:] == ["provisioned", "data_in"]


def test_tutorial_password_section_verbatim(live_connector):
    connector, fqdn = live_connector
    connector.auth_type = "password"
    connector.save()
    device_services.whitelist_device(connector, "00000002")
    password = "a-very-long-device-password"
    activate = curl(
        "-i",
        "-X",
        "POST",
        f"{fqdn}/provision/activate",
        "-H",
        FORM,
        "-d",
        f"id=00000002&password={password}",
    )
    assert activate.stdout.startswith("HTTP/1.1 204 No Content")
    credentials = base64.b64encode(f"00000002:{password}".encode()).decode()
    write = curl(
        "-i",
        "-X",
        "POST",
        f"{fqdn}/onep:v1/stack/alias",
        "-H",
        f"Authorization: Basic {credentials}",
        "-H",
        FORM,
        "-d",
        "myalias=50",
    )
    assert write.stdout.startswith("HTTP/1.1 204")
    short = curl(
        "-i",
        "-X",
        "POST",
        f"{fqdn}/provision/activate",
        "-H",
        FORM,
        "-d",
        "id=00000003&password=short",
    )
    assert short.stdout.startswith("HTTP/1.1 415")
