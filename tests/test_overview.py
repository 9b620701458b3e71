"""The Overview tab (issue #19): its figures against a seeded connector, and how it keeps
them cheap (closed hours counted once, ranges found by bisecting ids)."""

from __future__ import annotations

import datetime as dt
import re

import pytest
import time_machine
from django.core.cache import cache
from django.test import Client

from connector import events, overview
from connector.models import Event, EventCount, EventCountMark, EventType
from connector.services import create_connector
from devices.models import Device

NOW = dt.datetime(2026, 12, 3, 12, 30, tzinfo=dt.UTC)
NOW_US = int(NOW.timestamp() * 1_000_000)
HOUR = overview.HOUR_US


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()


def _event(connector, type, at_us, identity="", reason=None):
    events.record(connector, type, f"{type} {identity}", identity=identity)
    event = Event.objects.order_by("-id").first()
    event.time = at_us
    if reason is not None:
        event.payload = {"reason": reason}
    event.save()


@pytest.fixture
def seeded(alice, bob, connector):
    expire_past, expire_future = NOW_US - HOUR, NOW_US + 48 * HOUR
    for i in range(3):
        Device.objects.create(connector=connector, identity=f"w{i}", expire=expire_future)
    Device.objects.create(connector=connector, identity="x0", expire=expire_past)
    Device.objects.create(connector=connector, identity="l0", locked=True, state="provisioned")
    for i in range(4):
        Device.objects.create(connector=connector, identity=f"p{i}", state="provisioned")
    other = create_connector(bob, "Bob's")
    # What the fixtures logged at the real time came first, as it would have live (the
    # events' time grows with their id).
    Event.objects.filter(connector__in=[connector, other]).update(time=NOW_US - 40 * HOUR)
    planned = []  # (µs, connector, type, identity, reason), logged in time order as live
    for hours_ago in (30, 5, 2, 2):
        # Another connector's events interleave: they count for nobody here.
        planned.append((NOW_US - hours_ago * HOUR, connector, EventType.PROVISIONED, "p0", None))
        planned.append((NOW_US - hours_ago * HOUR, other, EventType.PROVISIONED, "q0", None))
    failed = EventType.PROVISION_FAILED
    planned.append((NOW_US - 2 * HOUR + 1, connector, failed, "z1", "not whitelisted"))
    planned.append((NOW_US - 1 * HOUR, connector, failed, "z2", "not whitelisted"))
    planned.append((NOW_US - 1 * HOUR, connector, failed, "w0", "expired"))
    for minutes_ago, identity in ((1, "p0"), (1, "p1"), (10, "p1"), (70, "p2")):
        at = NOW_US - minutes_ago * 60_000_000
        planned.append((at, connector, EventType.DATA_IN, identity, None))
        planned.append((at, other, EventType.DATA_IN, "q0", None))
    with time_machine.travel(NOW, tick=False):
        for at, where, type, identity, reason in sorted(planned, key=lambda p: p[0]):
            _event(where, type, at, identity, reason)
    return connector


def test_status_counts_match_the_device_list_filters(seeded):
    with time_machine.travel(NOW, tick=False):
        counts = overview.status_counts(seeded)
        listed = {
            status: Device.objects.filter(connector=seeded).with_status(status).count()
            for status in counts
        }
    assert counts == listed
    assert counts["whitelisted"] == 3 and counts["expired"] == 1 and counts["locked"] == 1
    assert counts["provisioned"] == 4


def test_hourly_provisions_and_failures_by_reason(seeded):
    with time_machine.travel(NOW, tick=False):
        day = overview.hourly(seeded, 24)
        week = overview.hourly(seeded, 24 * 7)
    assert len(day) == 24 and day[-1]["hour"] == NOW_US // HOUR * HOUR
    by_hour = {b["hour"]: b for b in day}
    two_ago = (NOW_US - 2 * HOUR) // HOUR * HOUR
    assert by_hour[two_ago]["provisioned"] == 2
    assert by_hour[two_ago]["failed"] == {"not whitelisted": 1}
    assert sum(b["provisioned"] for b in day) == 3  # the one 30 hours ago is outside
    assert sum(b["provisioned"] for b in week) == 4
    assert overview.failure_reasons(day) == [("not whitelisted", 2), ("expired", 1)]


def test_closed_hours_are_counted_once_and_kept(seeded):
    with time_machine.travel(NOW, tick=False):
        overview.hourly(seeded, 24)
    mark = EventCountMark.objects.get(connector=seeded)
    assert mark.until == NOW_US // HOUR * HOUR
    assert EventCount.objects.filter(connector=seeded).exists()
    # The events themselves pruned: the closed hours' figures stay (read from the counts).
    Event.objects.filter(connector=seeded, type=EventType.PROVISIONED).delete()
    with time_machine.travel(NOW, tick=False):
        again = overview.hourly(seeded, 24)
    assert sum(b["provisioned"] for b in again) == 3
    # An hour later, only the hour that closed is counted.
    with time_machine.travel(NOW + dt.timedelta(hours=1), tick=False):
        overview.hourly(seeded, 24)
    assert EventCountMark.objects.get(connector=seeded).until == mark.until + HOUR


def test_last_hour_writes_per_minute_and_devices_seen(seeded):
    with time_machine.travel(NOW, tick=False):
        recent = overview.last_hour(seeded)
    assert len(recent.writes_per_minute) == 60
    assert recent.writes == 3  # the write 70 minutes ago is outside; the other's never count
    assert sorted(n for _m, n in recent.writes_per_minute if n) == [1, 2]
    # p0 and p1 wrote; z2 and w0 failed to provision (not "seen"); the rest is older.
    assert recent.devices_seen == 2


def test_first_id_since_bisects_to_the_first_event_of_the_range(seeded):
    ids = list(
        Event.objects.filter(connector=seeded, time__gte=NOW_US - 3 * HOUR)
        .order_by("id")
        .values_list("id", flat=True)
    )
    assert overview.first_id_since(seeded.pk, NOW_US - 3 * HOUR) == ids[0]
    assert overview.first_id_since(seeded.pk, NOW_US + HOUR) is None


def test_overview_page_links_each_figure(alice, seeded):
    client = Client()
    client.force_login(alice)
    with time_machine.travel(NOW, tick=False):
        page = client.get(f"/c/{seeded.pk}/overview/").content.decode()
        week = client.get(f"/c/{seeded.pk}/overview/", {"range": "week"}).content.decode()
    assert f'href="/c/{seeded.pk}/devices/?status=expired"' in page
    assert re.search(r'data-status="provisioned">.*?<span class="stat-value">4<', page, re.S)
    provisions = page.split('id="provisions-title"', 1)[1]
    assert 'data-total="3" data-bars="24"' in provisions
    assert 'data-total="4" data-bars="168"' in week
    assert "?type=provision_failed&amp;since=2026-12-02T13:00" in page
    assert 'data-reason="not whitelisted"' in page
    assert re.search(r'id="devices-seen"><a [^>]*>2</a>', page)
    assert ">Overview</a>" in page


def test_an_hour_is_counted_for_good_only_a_minute_after_it_ends(seeded):
    boundary = dt.datetime(2026, 12, 3, 13, 0, 30, tzinfo=dt.UTC)  # 30 s into the next hour
    with time_machine.travel(boundary, tick=False):
        overview.hourly(seeded, 24)
    # 12:00 is still counted live: a late event stamped inside it still shows.
    assert EventCountMark.objects.get(connector=seeded).until == NOW_US // HOUR * HOUR
    late = NOW_US // HOUR * HOUR + 59 * 60_000_000
    _event(seeded, EventType.PROVISIONED, late, "p3")
    with time_machine.travel(boundary + dt.timedelta(minutes=1), tick=False):
        hours = overview.hourly(seeded, 24)
    twelve = next(b for b in hours if b["hour"] == NOW_US // HOUR * HOUR)
    assert twelve["provisioned"] == 1
    assert EventCountMark.objects.get(connector=seeded).until == NOW_US // HOUR * HOUR + HOUR


def test_prune_drops_counts_older_than_the_overview_shows(seeded):
    with time_machine.travel(NOW, tick=False):
        overview.hourly(seeded, 24 * 7)
    assert EventCount.objects.filter(connector=seeded).exists()
    with time_machine.travel(NOW + dt.timedelta(days=9), tick=False):
        deleted = overview.prune()
        assert deleted > 0 and not EventCount.objects.exists()
        # What remains of the mark is consistent: a new view counts its range afresh.
        week = overview.hourly(seeded, 24 * 7)
    assert sum(b["provisioned"] for b in week) == 0
