#!/usr/bin/env python
"""Benchmark the CSV whitelisting import: rows/s and peak memory, on SQLite and PostgreSQL.

    .venv/bin/python scripts/bench_import.py [--rows 100000] [--postgres URL]

Generates a CSV of N identities with two tags each (the tutorial's shape), then imports it
into a fresh database in a child process per backend, through the same service the upload page
and the API use. Prints one line per backend. Nothing here is asserted: it reports.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_csv(path: Path, rows: int) -> None:
    with path.open("w", newline="") as fh:
        fh.write("ID,TLS Client Certificate,Tags\n")
        for i in range(1, rows + 1):
            tags = json.dumps(
                [
                    {"name": "group", "value": f"g{i % 50}"},
                    {"name": "claim_code", "value": f"c{i:08d}"},
                ]
            )
            fh.write(f'{i:08d},,"{tags.replace(chr(34), chr(34) * 2)}"\n')


def child(csv_path: str) -> None:
    """Runs inside a fresh process with DATABASE_URL set: migrate, import, report."""
    import django

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iotconnector.settings")
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from connector.models import User
    from connector.services import create_connector
    from devices.importer import import_identities

    user = User.objects.create_user(f"bench{time.time_ns()}@example.com", "bench password 123")
    connector = create_connector(user, "bench")
    connector.id_type, connector.id_length = "base10", 8
    connector.save()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with open(csv_path, "rb") as fh:
        report = import_identities(connector, fh, actor=user)
    elapsed = time.perf_counter() - start
    if not report.ok:
        raise SystemExit(f"import failed: {report.errors[:3]}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "created": report.created,
                "seconds": round(elapsed, 2),
                "rows_per_s": round(report.created / elapsed),
                "peak_rss_mb": round(peak, 1),
                "rss_before_mb": round(rss_before / 1024, 1),
            }
        )
    )
    if connector.devices.count() != report.created:
        raise SystemExit("device count mismatch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "identities.csv"
        make_csv(csv_path, args.rows)
        size = csv_path.stat().st_size / 1e6
        print(f"CSV: {args.rows} rows with 2 tags each, {size:.1f} MB")
        targets = {"sqlite": f"sqlite:///{tmp}/bench.sqlite3", "postgresql": args.postgres}
        for name, url in targets.items():
            env = {**os.environ, "DATABASE_URL": url, "DATA_DIR": tmp}
            if name == "postgresql":
                # A scratch schema-free database: drop and recreate the bench tables' DB.
                env["DATABASE_URL"] = _scratch_postgres(url)
                if env["DATABASE_URL"] is None:
                    print("postgresql: not reachable, skipped")
                    continue
            result = subprocess.run(
                [sys.executable, __file__, "--child", str(csv_path)],
                env=env,
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            if result.returncode:
                print(f"{name}: FAILED\n{result.stderr[-2000:]}")
                continue
            data = json.loads(result.stdout.strip().splitlines()[-1])
            print(
                f"{name:10s} {data['created']} rows in {data['seconds']} s = "
                f"{data['rows_per_s']} rows/s, peak RSS {data['peak_rss_mb']} MB "
                f"(before import {data['rss_before_mb']} MB)"
            )
            if name == "postgresql":
                _drop_postgres(env["DATABASE_URL"], url)


def _psql(url: str, sql: str) -> bool:
    return subprocess.run(["psql", url, "-qc", sql], capture_output=True).returncode == 0


def _scratch_postgres(url: str) -> str | None:
    name = "bench_import"
    _psql(url, f"DROP DATABASE IF EXISTS {name}")
    if not _psql(url, f"CREATE DATABASE {name}"):
        return None
    return url.rsplit("/", 1)[0] + "/" + name


def _drop_postgres(scratch: str, url: str) -> None:
    _psql(url, "DROP DATABASE IF EXISTS bench_import")


if __name__ == "__main__":
    main()
