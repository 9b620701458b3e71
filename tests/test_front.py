"""The ASGI front (iotconnector/front.py) as the production server runs it."""

import pytest
import requests

from devices.models import DeviceActivity
from tests.test_long_poll import device  # noqa: F401  (the fixture)


@pytest.fixture
def small_bodies(live_server):
    saved = live_server.app.max_body
    live_server.app.max_body = 1000
    yield live_server
    live_server.app.max_body = saved


def test_a_body_over_the_limit_is_refused_before_django(small_bodies, transactional_db):
    url = f"{small_bodies.url}/api:1/token/"
    declared = requests.post(url, data=b"x" * 2000, timeout=10)
    assert declared.status_code == 413 and "larger than" in declared.text
    streamed = requests.post(url, data=(b"x" * 500 for _ in range(4)), timeout=10)
    assert streamed.status_code == 413
    assert requests.post(url, json={}, timeout=10).status_code == 401  # Django answers


def test_header_names_with_underscores_are_dropped(device):  # noqa: F811
    """`X_Forwarded_For` must not pass for the proxy's `X-Forwarded-For` (both would be
    HTTP_X_FORWARDED_FOR in the environ); loopback is a trusted proxy here."""
    response = requests.post(
        f"{device.base}/onep:v1/stack/alias",
        data="temp=1",
        headers={
            **device.headers(),
            "Content-Type": "application/x-www-form-urlencoded",
            "X_Forwarded_For": "203.0.113.50",
        },
        timeout=10,
    )
    assert response.status_code == 204
    assert DeviceActivity.objects.get().last_ip == "127.0.0.1"
