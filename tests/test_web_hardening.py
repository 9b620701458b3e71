"""Browser and host hardening (the hardening issue): a Content-Security-Policy on every page,
no cross-origin API writes with replayed Basic credentials, and data files only their owner
can read."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from connector.models import Connector
from tests.conftest import basic


@pytest.mark.parametrize("path", ["/login/", "/signup/", "/", "/c/{id}/", "/c/{id}/devices/"])
def test_every_page_has_a_content_security_policy(browser_client, connector, path):
    response = browser_client.get(path.format(id=connector.id), follow=True)
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy


@pytest.mark.parametrize(
    "headers",
    [
        {"HTTP_ORIGIN": "https://evil.example"},
        {"HTTP_ORIGIN": "null"},
        {"HTTP_SEC_FETCH_SITE": "cross-site"},
        {"HTTP_SEC_FETCH_SITE": "same-site", "HTTP_ORIGIN": "http://testserver"},
    ],
)
def test_a_cross_origin_form_with_basic_credentials_creates_nothing(client, alice, headers):
    response = client.post(
        "/api:1/connector/",
        "name=Planted",
        content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION=basic(alice.email),
        **headers,
    )
    assert response.status_code == 403
    assert not Connector.objects.filter(name="Planted").exists()


@pytest.mark.parametrize(
    "headers", [{}, {"HTTP_ORIGIN": "http://testserver"}, {"HTTP_SEC_FETCH_SITE": "same-origin"}]
)
def test_scripts_and_same_origin_writes_still_work(client, alice, headers):
    response = client.post(
        "/api:1/connector/",
        {"name": "Scripted"},
        content_type="application/json",
        HTTP_AUTHORIZATION=basic(alice.email),
        **headers,
    )
    assert response.status_code == 201


def test_the_embedded_database_and_its_directory_are_private(tmp_path):
    root = Path(__file__).resolve().parent.parent
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {"DATA_DIR": str(data), "DJANGO_SETTINGS_MODULE": "iotconnector.settings"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], env=env, cwd=root, check=True)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = [p for p in data.iterdir() if p.name.startswith("db.sqlite3") or p.is_file()]
    assert any(p.name == "db.sqlite3" for p in files)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path.name
