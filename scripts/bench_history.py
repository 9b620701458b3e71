#!/usr/bin/env python
"""Benchmark value history reads on PostgreSQL at fleet scale (issue #19).

    .venv/bin/python scripts/bench_history.py [--devices 1000] [--days 30] [--samples 50]
        [--postgres postgres://postgres@127.0.0.1:5432/postgres]

Seeds a fresh database (`bench_history`) with one connector, `--devices` devices and one
point per device per minute for `--days` days (1,000 × 30 days: 43.2 M points), through the
same table and unique index the store writes (device, alias, timestamp). Then, in one
process with the data cold and warm, measures server time of
  baseline   the device page's other queries (the page with an empty range)
  api        GET …/identity/<id>/history?alias=temp&since=<a day ago>&limit=1440
  chart      the device page with its one-day chart (the series read and drawn as SVG)
  week       the device page with a week (10,080 points reduced to the chart's columns)
for `--samples` random devices each, and prints p50/p99 in ms and each ratio to the
baseline. The index is the table's unique (device_id, alias, timestamp): a device's day is
one index range scan whatever the table's size; EXPLAIN of the series query is printed.
Nothing here is asserted: it reports.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchlib import report_ms, timed_get  # noqa: E402

MINUTE_US = 60_000_000


def _database_url(base: str, name: str) -> str:
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _recreate(base: str, name: str) -> None:
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def _seed(devices: int, days: int, now_us: int) -> tuple[str, list[str]]:
    from django.core.management import call_command
    from django.db import connection

    from connector.models import User
    from connector.services import create_connector
    from devices.models import DataPoint, Device
    from devices.resources import check_definitions

    call_command("migrate", verbosity=0)
    user = User.objects.create_user("bench@example.com", "bench password 1234")
    connector = create_connector(user, "history bench")
    connector.resources = check_definitions({"temp": {"format": "number", "unit": "°C"}})
    connector.resources_version += 1
    connector.save()
    identities = [f"{i:08d}" for i in range(devices)]
    Device.objects.bulk_create(Device(connector=connector, identity=i) for i in identities)
    table = DataPoint._meta.db_table
    minutes = days * 24 * 60
    start_us = now_us - minutes * MINUTE_US
    started = time.perf_counter()
    with connection.cursor() as cursor:
        # Loaded in device order, as a fleet's history interleaves: the index is what makes
        # a device's range cheap, not the table's physical order.
        cursor.execute(
            f"INSERT INTO {table} (device_id, alias, timestamp, value)"  # noqa: S608
            " SELECT d.id, 'temp', %s::bigint + m::bigint * %s::bigint,"
            " (20 + 5 * sin(m / 90.0))::numeric(6,2)::text"
            " FROM generate_series(0, %s - 1) AS m CROSS JOIN"
            f" (SELECT id FROM {Device._meta.db_table} WHERE connector_id = %s) AS d",
            [start_us, MINUTE_US, minutes, connector.pk],
        )
        cursor.execute(f"ANALYZE {table}")
        cursor.execute(f"SELECT pg_size_pretty(pg_total_relation_size('{table}'))")
        size = cursor.fetchone()[0]
    print(
        f"seeded {devices * minutes:,} points ({devices} devices × {minutes} minutes) in "
        f"{time.perf_counter() - started:.0f} s; table with its index: {size}"
    )
    return connector.pk, identities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    name = "bench_history"
    _recreate(args.postgres, name)
    os.environ["DATABASE_URL"] = _database_url(args.postgres, name)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iotconnector.settings")
    os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="bench-history-"))
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection
    from django.test import Client

    from connector.models import User, now_us
    from devices.history import series
    from devices.models import Device

    settings.ALLOWED_HOSTS = ["*"]
    settings.STORAGES = {  # rendered without collectstatic's manifest
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    now = now_us()
    connector_id, identities = _seed(args.devices, args.days, now)
    client = Client()
    client.force_login(User.objects.get(email="bench@example.com"))
    import random

    rng = random.Random(7)
    picks = [rng.choice(identities) for _ in range(args.samples)]
    day_ago = now - 86400 * 1_000_000
    device = Device.objects.get(identity=picks[0])
    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN (ANALYZE, BUFFERS) SELECT timestamp, value FROM devices_datapoint"
            " WHERE device_id = %s AND alias = 'temp' AND timestamp >= %s AND timestamp < %s"
            " ORDER BY timestamp DESC LIMIT 10000",
            [device.pk, day_ago, now + 1],
        )
        print("series query plan:\n    " + "\n    ".join(row[0] for row in cursor.fetchall()))
    if len(series(device, "temp", day_ago, now + 1)) != 1440:
        raise SystemExit("a day of one device is not 1,440 points: the seed is wrong")

    page = f"/c/{connector_id}/devices/d/{{}}/"
    api = f"/api:1/service/{connector_id}/device2/identity/{{}}/history"
    empty = {"range": "custom", "from": "2000-01-01T00:00", "to": "2000-01-02T00:00"}
    results: dict[str, list[float]] = {"baseline": [], "api": [], "chart": [], "week": []}
    for identity in picks:  # interleaved, each device's first read cold
        timed_get(client, page.format(identity), empty, results["baseline"])
        query = {"alias": "temp", "since": day_ago, "limit": 1440}
        timed_get(client, api.format(identity), query, results["api"])
        timed_get(client, page.format(identity), {"range": "day"}, results["chart"])
        timed_get(client, page.format(identity), {"range": "week"}, results["week"])
    print(f"server time over {args.samples} random devices (Django test client, in process):")
    base = report_ms("baseline", results["baseline"], None)
    for key in ("api", "chart", "week"):
        report_ms(key, results[key], base)


if __name__ == "__main__":
    main()
