#!/usr/bin/env python
"""Benchmark the Overview tab on PostgreSQL at fleet scale (issue #19).

    .venv/bin/python scripts/bench_overview.py [--devices 1000000] [--events 10000000]
        [--samples 20] [--postgres postgres://postgres@127.0.0.1:5432/postgres]

Seeds a fresh database (`bench_overview`) with one connector holding `--devices` devices
(most provisioned, some whitelisted, expired, locked) and `--events` events over 30 days
(writes, provisions, failures with reasons), in id order as they are logged. Then measures,
in one process, server time of
  baseline   the Logs tab's first page (an indexed keyset page: the cheapest tab)
  first      the Overview's first view of 7 days (the closed hours counted once)
  overview   the Overview, 24 hours, status counts cached (the view most people get)
  week       the Overview, 7 days, status counts cached
  uncached   the Overview, 24 hours, with the 30-second status cache emptied each time
and prints p50/p99 in ms and each ratio to the baseline. Nothing here is asserted.
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

HOUR_US = 3600 * 1_000_000


def _recreate(base: str, name: str) -> str:
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(urlsplit(base)._replace(path=f"/{name}"))


def _seed(devices: int, events: int, now: int) -> str:
    from django.core.management import call_command
    from django.db import connection

    from connector.models import Event, User
    from connector.services import create_connector
    from devices.models import Device

    call_command("migrate", verbosity=0)
    user = User.objects.create_user("bench@example.com", "bench password 1234")
    connector = create_connector(user, "overview bench")
    started = time.perf_counter()
    device, event = Device._meta.db_table, Event._meta.db_table
    span = 30 * 24 * HOUR_US
    with connection.cursor() as cursor:
        # 90 % provisioned, 6 % whitelisted, 2 % expired, 2 % locked.
        cursor.execute(
            f"INSERT INTO {device} (connector_id, identity, state, locked, auth_type,"  # noqa: S608
            " secret_hash, cert_pem, cert_fingerprint, expire, created_at)"
            " SELECT %s, lpad(i::text, 8, '0'),"
            " CASE WHEN i %% 50 < 45 THEN 'provisioned' ELSE 'whitelisted' END,"
            " i %% 50 = 49, '', '', '', '',"
            " CASE WHEN i %% 50 = 48 THEN %s::bigint ELSE %s::bigint END, now()"
            " FROM generate_series(1, %s) AS i",
            [connector.pk, now - HOUR_US, now + 48 * HOUR_US, devices],
        )
        # Events oldest first: 96 % writes, 3 % provisions, 1 % failures with 4 reasons.
        cursor.execute(
            f"INSERT INTO {event} (connector_id, time, type, identity, source_ip, actor_id,"  # noqa: S608
            " actor_email, summary, payload)"
            " SELECT %s, %s::bigint + i::bigint * %s::bigint,"
            " CASE WHEN i %% 100 < 96 THEN 'data_in' WHEN i %% 100 < 99 THEN 'provisioned'"
            " ELSE 'provision_failed' END,"
            " lpad((i %% %s)::text, 8, '0'), '198.51.100.7', NULL, '', 'bench',"
            " CASE WHEN i %% 100 = 99 THEN jsonb_build_object('reason',"
            " (ARRAY['not whitelisted', 'expired', 'locked', 'bad password'])[1 + i %% 4])"
            " ELSE '{}'::jsonb END"
            " FROM generate_series(1, %s) AS i",
            [connector.pk, now - span, span // events, devices, events],
        )
        cursor.execute(f"ANALYZE {device}")
        cursor.execute(f"ANALYZE {event}")
    print(
        f"seeded {devices:,} devices and {events:,} events over 30 days in "
        f"{time.perf_counter() - started:.0f} s"
    )
    return connector.pk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    os.environ["DATABASE_URL"] = _recreate(args.postgres, "bench_overview")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iotconnector.settings")
    os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="bench-overview-"))
    import django

    django.setup()
    from django.conf import settings
    from django.core.cache import cache
    from django.test import Client

    from connector.models import User, now_us

    settings.ALLOWED_HOSTS = ["*"]
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    connector_id = _seed(args.devices, args.events, now_us())
    client = Client()
    client.force_login(User.objects.get(email="bench@example.com"))
    page, logs = f"/c/{connector_id}/overview/", f"/c/{connector_id}/logs/"
    first: list[float] = []
    timed_get(client, page, {"range": "week"}, first)
    results: dict[str, list[float]] = {"baseline": [], "overview": [], "week": [], "uncached": []}
    for _ in range(args.samples):
        timed_get(client, logs, {}, results["baseline"])
        timed_get(client, page, {}, results["overview"])
        timed_get(client, page, {"range": "week"}, results["week"])
        timed_get(client, page, {}, results["uncached"], before=cache.clear)
    print(f"server time over {args.samples} views (Django test client, in process):")
    base = report_ms("baseline", results["baseline"], None)
    print(f"  first     {first[0]:8.1f} ms  (7 days of closed hours counted once)")
    for key in ("overview", "week", "uncached"):
        report_ms(key, results[key], base)


if __name__ == "__main__":
    main()
