"""PostgreSQL: token writes answered in the front's event loop (provisioning/fastwrite.py)
must behave exactly as the ordinary path: same stored values, events, activity, refusals."""

import pytest
import requests

from connector.models import Event, EventType, User
from connector.services import create_connector
from devices import services as device_services
from devices.models import AliasValue, Device, DeviceActivity
from tests.conftest import PASSWORD, define
from tests.test_long_poll import activated


@pytest.fixture
def fast(live_server, transactional_db):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the event-loop write path is PostgreSQL's: runs in its pass of the suite")
    user = User.objects.create_user("maker@example.com", PASSWORD)
    connector = create_connector(user, "Fast line")
    connector.devmode = True
    connector.save()
    define(connector, "temp", level={"format": "number", "allowed": ["0-10"]})
    device = activated(live_server, connector)
    assert device.write("temp=1").status_code == 204  # the ordinary path learns the definitions
    return live_server.app.fast, device


def test_a_token_write_is_answered_in_the_event_loop_and_stored_with_its_event(fast):
    path, device = fast
    before = path.answered
    response = device.write("temp=21.5&level=3")
    assert response.status_code == 204
    assert path.answered == before + 1
    values = dict(AliasValue.objects.values_list("alias", "reported"))
    assert values == {"temp": "21.5", "level": "3"}
    event = Event.objects.filter(type=EventType.DATA_IN).latest("id")
    assert event.identity == "00000001" and "temp" in event.summary
    assert DeviceActivity.objects.get().last_ip == "127.0.0.1"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("level=11", 400),  # refused by its definition: the ordinary path names the reason
        ("nosuch=1", 204),  # undefined only: logged, not stored
        ("temp=1&temp=2", 400),  # duplicate alias
    ],
)
def test_what_the_event_loop_does_not_store_is_answered_by_the_ordinary_path(fast, body, status):
    path, device = fast
    before = path.answered
    response = device.write(body)
    assert response.status_code == status, response.text
    assert path.answered == before
    assert AliasValue.objects.get(alias="temp").reported == "1"


def test_refusals_fall_back_to_the_ordinary_path(fast, live_server):
    path, device = fast
    before = path.answered
    wrong = requests.post(
        f"{live_server.url}/onep:v1/stack/alias",
        data="temp=5",
        headers={
            **device.headers(),
            "X-Exosite-CIK": "a" * 40,
            "Content-Type": "application/x-www-form-urlencoded",
        },
        timeout=10,
    )
    assert wrong.status_code == 401
    device_services.set_locked(device.connector, Device.objects.all(), True)
    assert device.write("temp=5").status_code == 403
    assert path.answered == before
    assert AliasValue.objects.get(alias="temp").reported == "1"


def test_the_client_address_comes_from_the_trusted_proxy(fast):
    path, device = fast
    response = requests.post(
        f"{device.base}/onep:v1/stack/alias",
        data="temp=6",
        headers={
            **device.headers(),
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Forwarded-For": "203.0.113.9",
        },
        timeout=10,
    )
    assert response.status_code == 204
    # Loopback is a trusted proxy by default: its X-Forwarded-For names the client.
    assert DeviceActivity.objects.get().last_ip == "203.0.113.9"
