#!/usr/bin/env python
"""Time the Devices list (keyset pages and filters) on a connector with 1,000,000 devices.

    .venv/bin/python scripts/bench_listing.py [--devices 1000000] [--postgres URL]

Fills a scratch PostgreSQL database with generate_series (10 % provisioned, 0.1 % locked, one
tag each), then prints the best of five timings for each page the Devices tab can ask for.
Reports only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchlib import scratch_postgres

ROOT = Path(__file__).resolve().parent.parent
CASES = [
    ("first page", {}),
    ("deep page (after 00900000)", {"after": "00900000"}),
    ("previous page (before 00500000)", {"before": "00500000"}),
    ("status=provisioned (10 %)", {"status": "provisioned"}),
    ("status=locked (0.1 %)", {"status": "locked"}),
    ("status=expired (none)", {"status": "expired"}),
    ("tag group=g42 (1 %)", {"tag_name": "group", "tag_value": "g42"}),
    ("identity prefix 00777", {"identity": "00777"}),
]


def child(devices: int) -> None:
    import django

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iotconnector.settings")
    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from connector.models import User
    from connector.services import create_connector
    from devices import listing

    call_command("migrate", verbosity=0)
    connector = create_connector(User.objects.create_user("bench@example.com", "x"), "bench")
    start = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO devices_device (connector_id, identity, state, locked, auth_type,"
            " secret_hash, cert_pem, cert_fingerprint, expire, created_at)"
            " SELECT %s, lpad(i::text, 8, '0'),"
            " CASE WHEN i %% 10 = 0 THEN 'provisioned' ELSE 'whitelisted' END,"
            " i %% 1000 = 0, '', '', '', '', 4102444800000000, now()"
            " FROM generate_series(1, %s) i",
            [connector.pk, devices],
        )
        cursor.execute(
            "INSERT INTO devices_devicetag (device_id, connector_id, name, value)"
            " SELECT id, connector_id, 'group', 'g' || (id % 100) FROM devices_device"
        )
        cursor.execute("ANALYZE")
    print(f"{devices} devices with tags loaded in {time.perf_counter() - start:.1f} s")
    for label, params in CASES:
        flt = listing.DeviceFilter(
            **{k: v for k, v in params.items() if k not in ("after", "before")}
        )
        qs = listing.filtered(connector, flt)
        best = float("inf")
        for _ in range(5):
            begin = time.perf_counter()
            rows, more_after, _more_before = listing.page(
                qs, after=params.get("after", ""), before=params.get("before", "")
            )
            best = min(best, time.perf_counter() - begin)
        print(f"  {label:34s} {best * 1000:7.1f} ms  ({len(rows)} rows)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    with scratch_postgres(args.postgres, "bench_listing") as scratch:
        if scratch is None:
            raise SystemExit("PostgreSQL is not reachable")
        env = {**os.environ, "DATABASE_URL": scratch}
        subprocess.run(
            [sys.executable, __file__, "--child", str(args.devices)], env=env, cwd=ROOT, check=True
        )


if __name__ == "__main__":
    main()
