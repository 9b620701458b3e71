"""Connector pages: create, list, tabs, copy domain, rename, delete, tenant isolation."""

import re

import pytest
from django.urls import reverse

from connector.models import Connector, Event

TAB_URLS = [
    "connector-settings",
    "device-list",
    "connector-resources",
    "connector-logs",
    "connector-delete",
]


def test_create_connector_gets_random_id_and_lists_it(browser_client, alice):
    response = browser_client.post(reverse("connector-list"), {"name": "  Thermostats  "})
    connector = Connector.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("connector-settings", args=[connector.id])
    assert re.fullmatch(r"[a-z0-9]{14,20}", connector.id)
    assert connector.name == "Thermostats"
    assert list(connector.members.all()) == [alice]
    page = browser_client.get(reverse("connector-list")).content.decode()
    assert "Thermostats" in page and connector.id in page


def test_connector_ids_differ(alice):
    from connector.services import create_connector

    ids = {create_connector(alice, f"c{i}").id for i in range(20)}
    assert len(ids) == 20


def test_blank_name_is_refused(browser_client):
    response = browser_client.post(reverse("connector-list"), {"name": "   "})
    assert response.status_code == 200
    assert "Give the connector a name" in response.content.decode()
    assert not Connector.objects.exists()


def test_list_shows_only_my_connectors(browser_client, connector, bobs_connector):
    page = browser_client.get(reverse("connector-list")).content.decode()
    assert connector.name in page
    assert bobs_connector.id not in page and "Bob" not in page


@pytest.mark.parametrize("name", TAB_URLS)
def test_another_users_connector_is_404_on_every_page(browser_client, bobs_connector, name):
    assert browser_client.get(reverse(name, args=[bobs_connector.id])).status_code == 404
    assert browser_client.post(reverse(name, args=[bobs_connector.id]), {}).status_code == 404


def test_unknown_connector_is_404(browser_client):
    assert (
        browser_client.get(reverse("connector-settings", args=["nosuchconnector1"])).status_code
        == 404
    )


def test_others_cannot_rename_or_delete(browser_client, bobs_connector):
    browser_client.post(reverse("connector-rename", args=[bobs_connector.id]), {"name": "mine"})
    browser_client.post(reverse("connector-delete", args=[bobs_connector.id]))
    bobs_connector.refresh_from_db()
    assert bobs_connector.name == "Bob's private line"


@pytest.mark.parametrize("name", TAB_URLS[:4])
def test_every_tab_has_the_tabs_and_the_copy_button(browser_client, connector, name):
    page = browser_client.get(reverse(name, args=[connector.id])).content.decode()
    for label in ("Settings", "Devices", "Resources", "Content", "Logs", "Members"):
        assert f">{label}</a>" in page
    # The device API's full base URL, as reached from this page (the test client's port 80).
    assert f'value="http://{connector.id}.localhost"' in page
    assert 'data-copy="#fqdn"' in page
    tabs = page[page.index('<nav class="tabs"') :]
    tabs = tabs[: tabs.index("</nav>")]
    assert tabs.count('aria-current="page"') == 1


def test_assets_are_served_by_the_app_not_a_cdn(browser_client, connector):
    page = browser_client.get(reverse("connector-settings", args=[connector.id])).content.decode()
    assets = re.findall(r'(?:href|src)="([^"]+\.(?:css|js))"', page)
    assert assets and all(a.startswith("/static/") for a in assets)
    assert not re.search(r'(?:href|src)="https?://', page)


def test_device_api_domain_follows_the_setting(browser_client, connector, settings):
    settings.DEVICE_API_DOMAIN = "devices.example.net"
    page = browser_client.get(reverse("device-list", args=[connector.id])).content.decode()
    assert f'value="http://{connector.id}.devices.example.net"' in page


def test_rename(browser_client, connector):
    response = browser_client.post(
        reverse("connector-rename", args=[connector.id]), {"name": "Line 2"}
    )
    assert response.status_code == 302
    connector.refresh_from_db()
    assert connector.name == "Line 2"
    event = Event.objects.filter(connector=connector, type="connector_renamed").get()
    assert event.actor_email == "alice@example.com"


def test_delete_asks_first_then_removes_the_connector(browser_client, connector):
    page = browser_client.get(reverse("connector-delete", args=[connector.id]))
    assert page.status_code == 200
    assert "cannot be undone" in page.content.decode()
    assert Connector.objects.filter(pk=connector.pk).exists()
    response = browser_client.post(reverse("connector-delete", args=[connector.id]))
    assert response.status_code == 302
    assert not Connector.objects.filter(pk=connector.pk).exists()
    assert not Event.objects.filter(connector_id=connector.pk).exists()
