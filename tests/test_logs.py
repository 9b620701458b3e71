"""The event log: what is recorded, filters, keyset pages, live feed, API, retention."""

import datetime as dt

import pytest
import time_machine
from django.core.management import call_command
from django.urls import reverse

from connector import events
from connector.logs import prune
from connector.models import Event, EventType
from devices import services as device_services
from tests.device_client import DeviceClient


@pytest.fixture
def many(connector):
    for i in range(12):
        events.record(
            connector,
            EventType.DATA_IN,
            f"Write n={i}",
            identity=f"dev-{i % 3}",
            source_ip="203.0.113.5",
            payload={"values": {"n": str(i)}},
        )
    return connector


def logs_url(connector, **params):
    from urllib.parse import urlencode

    return reverse("connector-logs", args=[connector.id]) + ("?" + urlencode(params))


def test_device_api_and_management_actions_are_logged_with_reasons(connector, alice):
    from tests.conftest import define

    define(connector, "temp")
    dev = DeviceClient(connector)
    device_services.whitelist_device(connector, "d1", actor=alice)
    token = dev.activate("d1").content.decode()
    dev.write(token, "temp=21")
    dev.read(token, "temp")
    dev.post("/onep:v1/stack/record", "alias=temp&1700000000=1", HTTP_X_EXOSITE_CIK=token)
    dev.activate("d1")  # already provisioned
    dev.write("Z" * 40, "temp=1")
    device = connector.devices.get()
    device_services.update_device(device, actor=alice, locked=True)
    device_services.update_device(device, actor=alice, locked=False)
    device_services.revoke_device(device, actor=alice)
    device_services.delete_devices(connector, connector.devices.all(), actor=alice)
    rows = list(
        Event.objects.filter(connector=connector)
        .order_by("id")
        .values_list("type", "identity", "actor_email")
    )
    assert [r[0] for r in rows] == [
        "connector_created",
        "whitelisted",
        "provisioned",
        "data_in",
        "read",
        "record",
        "provision_failed",
        "auth_failed",
        "locked",
        "unlocked",
        "revoked",
        "deleted",
    ]
    failed = Event.objects.get(type="provision_failed")
    assert failed.payload == {"reason": "identity already provisioned", "status": 409}
    assert Event.objects.get(type="data_in").payload == {"values": {"temp": "21"}}
    assert Event.objects.get(type="auth_failed").payload == {"reason": "unknown credentials"}
    assert all(
        email == "alice@example.com"
        for kind, _i, email in rows
        if kind in ("whitelisted", "locked", "unlocked", "revoked", "deleted")
    )
    for event in Event.objects.all():  # no secret ever reaches the log
        assert token not in event.summary + str(event.payload)


def test_an_event_with_nul_from_a_client_is_stored_readable_and_other_text_as_sent(connector):
    """PostgreSQL refuses NUL in text and JSON: wherever a client put one (identity, summary,
    a payload's keys, values and lists), the event is stored with U+FFFD instead; text that
    merely spells the escape, and everything else, is stored as sent."""
    events.record(
        connector,
        EventType.DATA_IN,
        "Write a\x00b",
        identity="dev\x00-1",
        payload={"values": {"k\x00": "v\x00", "spelled": "\\u0000"}, "list": ["x\x00"]},
    )
    stored = Event.objects.get(connector=connector, type=EventType.DATA_IN)
    assert (stored.summary, stored.identity) == ("Write a\ufffdb", "dev\ufffd-1")
    assert stored.payload == {
        "values": {"k\ufffd": "v\ufffd", "spelled": "\\u0000"},
        "list": ["x\ufffd"],
    }
    assert events.payload_json({"values": {"temp": "21.5"}}) == '{"values": {"temp": "21.5"}}'
    assert events.payload_json(None) == events.payload_json({}) == "{}"


def test_logs_tab_filters_and_pages(browser_client, many, monkeypatch):
    monkeypatch.setattr("connector.logs.DEFAULT_LIMIT", 5)
    first = browser_client.get(logs_url(many))
    ids = [e.id for e in first.context["events"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == 5
    assert first.context["older"] == ids[-1] and first.context["live"]
    second = browser_client.get(logs_url(many, before=ids[-1]))
    assert [e.id for e in second.context["events"]][0] < ids[-1]
    assert not second.context["live"]  # an older page does not scroll away
    only = browser_client.get(logs_url(many, identity="dev-1", type="data_in"))
    assert {e.identity for e in only.context["events"]} == {"dev-1"}
    assert len(only.context["events"]) == 4
    assert "Unknown event type" in browser_client.get(logs_url(many, type="nope")).content.decode()


def test_time_range_filter(browser_client, connector):
    with time_machine.travel(dt.datetime(2026, 5, 1, 10, tzinfo=dt.UTC), tick=False):
        events.record(connector, EventType.DATA_IN, "morning", identity="x")
    with time_machine.travel(dt.datetime(2026, 5, 1, 14, tzinfo=dt.UTC), tick=False):
        events.record(connector, EventType.DATA_IN, "afternoon", identity="x")
    response = browser_client.get(
        logs_url(connector, since="2026-05-01T12:00", until="2026-05-01T15:00", type="data_in")
    )
    assert [e.summary for e in response.context["events"]] == ["afternoon"]
    bad = browser_client.get(logs_url(connector, since="yesterday"))
    assert "Give a date/time" in bad.content.decode()


def test_live_feed_returns_only_newer_rows(browser_client, many):
    last = Event.objects.filter(connector=many).latest("id").id
    feed = reverse("connector-logs-feed", args=[many.id])
    empty = browser_client.get(feed, {"after": last})
    assert empty.content.decode().strip() == "" and empty["X-Last-Id"] == str(last)
    events.record(many, EventType.PROVISIONED, "Provisioned d9", identity="d9")
    fresh = browser_client.get(feed, {"after": last})
    assert "Provisioned d9" in fresh.content.decode()
    assert int(fresh["X-Last-Id"]) > last
    filtered = browser_client.get(feed, {"after": last, "type": "data_in"})
    assert "Provisioned d9" not in filtered.content.decode()


def test_live_feed_is_403_when_signed_out_and_404_for_others(browser_client, many, bobs_connector):
    from django.test import Client

    feed = reverse("connector-logs-feed", args=[many.id])
    assert Client().get(feed, {"after": 0}).status_code == 403
    other = reverse("connector-logs-feed", args=[bobs_connector.id])
    assert browser_client.get(other, {"after": 0}).status_code == 404


def test_logs_api(api, many, bobs_connector):
    url = f"/api:1/service/{many.id}/logs"
    page = api.get(url, {"limit": 5}).json()
    assert page["mayLoadMore"] is True and len(page["events"]) == 5
    event = page["events"][0]
    assert set(event) == {
        "id",
        "time",
        "type",
        "identity",
        "source_ip",
        "actor",
        "summary",
        "payload",
    }
    older = api.get(url, {"limit": 5, "before": page["events"][-1]["id"]}).json()
    assert older["events"][0]["id"] < page["events"][-1]["id"]
    typed = api.get(url, {"type": "connector_created"}).json()["events"]
    assert [e["type"] for e in typed] == ["connector_created"]
    assert api.get(url, {"limit": 0}).status_code == 400
    assert api.get(url, {"before": "x"}).status_code == 400
    assert api.get(f"/api:1/service/{bobs_connector.id}/logs").status_code == 404


def test_retention_by_age_and_by_count(connector, bobs_connector):
    with time_machine.travel(dt.datetime(2026, 1, 1, tzinfo=dt.UTC), tick=False):
        events.record(connector, EventType.DATA_IN, "old")
    for i in range(5):
        events.record(connector, EventType.DATA_IN, f"new {i}")
        events.record(bobs_connector, EventType.DATA_IN, f"bob {i}")
    assert prune(days=30, max_rows=0) >= 1
    assert not Event.objects.filter(summary="old").exists()
    prune(days=0, max_rows=3)
    assert list(
        Event.objects.filter(connector=connector).order_by("id").values_list("summary", flat=True)
    ) == ["new 2", "new 3", "new 4"]
    assert Event.objects.filter(connector=bobs_connector).count() == 3


def test_prune_command(connector, capsys, settings):
    settings.LOG_RETENTION_DAYS = 0
    settings.LOG_MAX_ROWS_PER_CONNECTOR = 1
    events.record(connector, EventType.DATA_IN, "a")
    events.record(connector, EventType.DATA_IN, "b")
    call_command("prune_events")
    assert "Deleted 2 events." in capsys.readouterr().out  # the creation event and "a"
    assert list(Event.objects.values_list("summary", flat=True)) == ["b"]
