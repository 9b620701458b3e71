"""Device value history (issue #19): writes and records become points; the history API's
keyset pages and ranges; CSV export; the device page's charts; retention."""

from __future__ import annotations

import datetime as dt
import re
import statistics

import pytest
import time_machine
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from connector.models import Membership, User
from devices import charts, history
from devices import services as device_services
from devices.models import DataPoint, Device
from tests.conftest import basic, define
from tests.device_client import DeviceClient

T0 = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
T0_US = int(T0.timestamp() * 1_000_000)


@pytest.fixture
def line(connector):
    define(
        connector,
        "note",
        temp={"format": "number", "unit": "°C"},
        setpoint={"format": "number", "settable": True, "unit": "°C"},
    )
    device_services.whitelist_device(connector, "dev1")
    dev = DeviceClient(connector)
    token = dev.activate("dev1").content.decode()
    return connector, dev, token


def _api(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=basic(user.email))
    return client


def _history(api: APIClient, connector, **params):
    url = f"/api:1/service/{connector.pk}/device2/identity/dev1/history"
    return api.get(url, params)


def test_writes_and_records_are_history_newest_first(alice, line):
    connector, dev, token = line
    for minute, value in enumerate(["20.5", "21", "21.5"]):
        with time_machine.travel(T0 + dt.timedelta(minutes=minute), tick=False):
            assert dev.write(token, f"temp={value}&note=ok{minute}").status_code == 204
    # A record: points at chosen times (seconds), in the same history.
    body = f"alias=temp&{T0_US // 1_000_000 - 60}=19.5"
    assert dev.post("/onep:v1/stack/record", body, HTTP_X_EXOSITE_CIK=token).status_code == 204
    found = _history(_api(alice), connector, alias="temp").json()
    assert found == {
        "mayLoadMore": False,
        "points": [
            {"timestamp": T0_US + 120_000_000, "value": "21.5"},
            {"timestamp": T0_US + 60_000_000, "value": "21"},
            {"timestamp": T0_US, "value": "20.5"},
            {"timestamp": T0_US - 60_000_000, "value": "19.5"},
        ],
    }
    notes = _history(_api(alice), connector, alias="note").json()["points"]
    assert [p["value"] for p in notes] == ["ok2", "ok1", "ok0"]


def _seed(connector, count: int, step_us: int = 60_000_000) -> Device:
    device = Device.objects.get(connector=connector, identity="dev1")
    DataPoint.objects.bulk_create(
        DataPoint(device=device, alias="temp", timestamp=T0_US + i * step_us, value=str(i))
        for i in range(count)
    )
    return device


def test_keyset_pages_cover_the_range_once(alice, line):
    connector, _dev, _token = line
    _seed(connector, 25)
    api, seen, before = _api(alice), [], None
    while True:
        params = {"alias": "temp", "limit": 10, **({"before": before} if before else {})}
        page = _history(api, connector, **params).json()
        seen += [p["value"] for p in page["points"]]
        if not page["mayLoadMore"]:
            break
        before = page["points"][-1]["timestamp"]
    assert seen == [str(i) for i in range(24, -1, -1)]


def test_since_and_until_bound_the_range(alice, line):
    connector, _dev, _token = line
    _seed(connector, 10)
    since = (T0 + dt.timedelta(minutes=3)).isoformat()
    until = T0_US + 6 * 60_000_000  # µs works as well as ISO
    page = _history(_api(alice), connector, alias="temp", since=since, until=until).json()
    assert [p["value"] for p in page["points"]] == ["5", "4", "3"]  # until is exclusive


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "alias"),
        ({"alias": "temp", "limit": "0"}, "limit"),
        ({"alias": "temp", "limit": "100000"}, "limit"),
        ({"alias": "temp", "limit": "ten"}, "limit"),
        ({"alias": "temp", "since": "yesterday"}, "since"),
        ({"alias": "temp", "before": "-5"}, "before"),
        ({"alias": "temp", "since": "2026-12-02", "until": "2026-12-01"}, "until"),
        ({"alias": "temp", "colour": "red"}, "colour"),
        ({"alias": "x" * 65}, "alias"),
    ],
)
def test_bad_parameters_are_400_naming_them(alice, line, params, field):
    connector, _dev, _token = line
    response = _history(_api(alice), connector, **params)
    assert response.status_code == 400 and field in response.json()


def test_history_of_another_users_connector_is_404_and_a_viewer_reads_it(alice, bob, line):
    connector, _dev, _token = line
    _seed(connector, 3)
    assert _history(_api(bob), connector, alias="temp").status_code == 404
    Membership.objects.create(user=bob, connector=connector, role="viewer")
    assert len(_history(_api(bob), connector, alias="temp").json()["points"]) == 3


def test_csv_export_streams_the_points(alice, line):
    connector, dev, token = line
    with time_machine.travel(T0, tick=False):
        dev.write(token, "note=%3Dcmd()")  # a formula is escaped in the CSV
    _seed(connector, 3)
    client = Client()
    client.force_login(alice)
    url = f"/c/{connector.pk}/devices/d/dev1/history.csv"
    response = client.get(url, {"alias": "temp"})
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="dev1-temp.csv"'
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert lines[0] == "time,timestamp_us,temp"
    assert lines[1] == f"2026-12-01T12:02:00.000000Z,{T0_US + 120_000_000},2"
    assert len(lines) == 4
    note = b"".join(client.get(url, {"alias": "note"}).streaming_content).decode()
    assert note.splitlines()[1].endswith(",'=cmd()")
    assert client.get(url).status_code == 400


def test_device_page_draws_a_chart_with_the_points_and_a_table_for_strings(alice, line):
    connector, dev, token = line
    with time_machine.travel(T0, tick=False):
        for minute in range(12):
            with time_machine.travel(T0 + dt.timedelta(minutes=minute), tick=False):
                dev.write(token, f"temp={20 + minute / 2}&note=n{minute}")
    device_services.set_state(Device.objects.get(identity="dev1"), {"setpoint": "22"}, actor=alice)
    client = Client()
    client.force_login(alice)
    with time_machine.travel(T0 + dt.timedelta(minutes=30), tick=False):
        page = client.get(f"/c/{connector.pk}/devices/d/dev1/", {"range": "hour"}).content.decode()
    figure = page[page.index('data-alias="temp"') :].split("</figure>", 1)[0]
    assert 'data-points="12"' in figure
    assert figure.count('class="point"') == 12
    assert "last <strong>25.5 °C</strong>" in figure and "min 20.0, max 25.5" in figure
    setpoint = page[page.index('data-alias="setpoint"') :].split("</figure>", 1)[0]
    assert 'class="set-line"' in setpoint and "set value <strong>22 °C</strong>" in setpoint
    note = page[page.index('data-alias="note"') :].split("</figure>", 1)[0]
    assert re.findall(r'<td class="mono">(n\d+)</td>', note)[:2] == ["n11", "n10"]
    # A day later, the hour range is empty; a custom range finds them again.
    with time_machine.travel(T0 + dt.timedelta(days=1), tick=False):
        later = client.get(f"/c/{connector.pk}/devices/d/dev1/", {"range": "hour"}).content
        custom = client.get(
            f"/c/{connector.pk}/devices/d/dev1/",
            {"range": "custom", "from": "2026-12-01T11:00", "to": "2026-12-01T13:00"},
        ).content.decode()
    assert b'data-alias="temp" data-points="0"' in later
    assert 'data-alias="temp" data-points="12"' in custom
    bad = client.get(f"/c/{connector.pk}/devices/d/dev1/", {"range": "custom", "from": "x"})
    assert bad.status_code == 200 and "From: give" in bad.content.decode()


def test_prune_drops_history_past_retention(settings, alice, line):
    connector, _dev, _token = line
    settings.HISTORY_RETENTION_DAYS = 30
    device = _seed(connector, 0)
    old, recent = T0_US - 31 * 86400 * 1_000_000, T0_US - 29 * 86400 * 1_000_000
    DataPoint.objects.bulk_create(
        [
            DataPoint(device=device, alias="temp", timestamp=old, value="1"),
            DataPoint(device=device, alias="temp", timestamp=recent, value="2"),
        ]
    )
    device.values.create(alias="temp", reported="2", timestamp=recent)
    with time_machine.travel(T0, tick=False):
        call_command("prune_events")
    assert list(DataPoint.objects.values_list("value", flat=True)) == ["2"]
    settings.HISTORY_RETENTION_DAYS = 0
    with time_machine.travel(T0 + dt.timedelta(days=400), tick=False):
        assert history.prune() == 0
    assert DataPoint.objects.count() == 1


def test_chart_reduction_keeps_the_extremes_of_each_column():
    span = 10_000
    points = [(i, "0") for i in range(span)]
    points[5000] = (5000, "99")  # one spike among ten thousand points
    points[7000] = (7000, "-5")
    chart = charts.line_chart("temp", points, 0, span)
    assert chart.count == span and chart.high == 99 and chart.low == -5
    vertices = chart.path.count("L") + 1
    assert vertices <= 2 * charts.COLUMNS
    ys = [float(v.split(",")[1]) for v in re.findall(r"[ML]([\d.]+,[\d.]+)", chart.path)]
    baseline = statistics.mode(ys)  # the zeros
    assert min(ys) < baseline - 100  # the spike is drawn, high above
    assert max(ys) > baseline  # and the dip below
    assert not chart.markers  # too many points for dots


def test_nice_ticks_cover_the_range():
    assert charts.nice_ticks(0, 10) == [0, 5, 10]
    assert charts.nice_ticks(0, 100, count=6) == [0, 20, 40, 60, 80, 100]
    ticks = charts.nice_ticks(3.2, 47.9)
    assert ticks[0] <= 3.2 and ticks[-1] >= 47.9 and len(ticks) <= 7


def test_non_numbers_are_counted_not_drawn():
    chart = charts.line_chart("temp", [(0, "1"), (1, "oops"), (2, "3")], 0, 3)
    assert chart.count == 2 and chart.skipped == 1 and chart.last == 3
