"""Shared by the benchmark scripts: seed a fresh database in a Django subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# Migrates, then leaves `connector` (with RESOURCES defined), `import_identities` and
# `activate_device` to the code that follows.
PREAMBLE = """
import io, json, django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from connector.models import User
from connector.services import create_connector
from devices.importer import import_identities
from devices.resources import check_definitions
from provisioning.services import activate_device
user = User.objects.create_user("bench@example.com", "bench password 1234")
connector = create_connector(user, "bench")
connector.resources = check_definitions(RESOURCES)
connector.resources_version += 1
connector.save()
"""


# A live PostgreSQL database has statistics (autovacuum analyses a table soon after it grows);
# a freshly seeded one does not, and its plans would scan what an index finds.
EPILOGUE = """
from django.db import connection as _connection
if _connection.vendor == "postgresql":
    with _connection.cursor() as _cursor:
        _cursor.execute("ANALYZE")
"""


def seed(env: dict, resources: dict, code: str) -> dict:
    """Run PREAMBLE and then `code`, which prints one JSON object last; return it."""
    script = f"RESOURCES = {resources!r}\n" + PREAMBLE + textwrap.dedent(code) + EPILOGUE
    out = subprocess.run([PY, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total * TICK_S


def processes(parent: int | None = None, name: str | None = None) -> list[int]:
    """Pids of `parent` and its children, or of every process called `name`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, rest = (entry / "stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        pid, comm, ppid = int(entry.name), head.split("(", 1)[1], int(rest.split()[1])
        if pid == parent or ppid == parent or (name is not None and comm == name):
            found.append(pid)
    return found


def start(env: dict, app: str, port: int, log: str | None = None, **popen) -> subprocess.Popen:
    """The production server command, serving `app`; its output to `log` (else
    BENCH_SERVER_LOG, else nowhere)."""
    log = log or os.environ.get("BENCH_SERVER_LOG", os.devnull)
    return subprocess.Popen(
        [str(Path(PY).parent / "gunicorn"), app, "-c", "deploy/gunicorn.conf.py"]
        + ["--bind", f"127.0.0.1:{port}"],
        env=env,
        cwd=ROOT,
        stdout=open(log, "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        **popen,
    )


@contextlib.contextmanager
def scratch_postgres(url: str, name: str):
    """A fresh PostgreSQL database `name` on `url`'s server, dropped afterwards; yields its
    URL, or None when that server cannot be reached."""

    def psql(sql: str) -> bool:
        return subprocess.run(["psql", url, "-qc", sql], capture_output=True).returncode == 0

    psql(f"DROP DATABASE IF EXISTS {name}")
    if not psql(f"CREATE DATABASE {name}"):
        yield None
        return
    try:
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        psql(f"DROP DATABASE IF EXISTS {name}")


def backend_options(parser, *, port: int) -> None:
    """The options every server benchmark takes: where it listens, the PostgreSQL server
    for its scratch database, and one backend only."""
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--only", choices=["sqlite", "postgresql"])


def each_backend(args, scratch_name: str, run) -> dict:
    """`run(name, database_url, data_dir, args)` on SQLite, then on a scratch PostgreSQL
    database, as `--only` says, in one temporary DATA_DIR; their results by backend."""
    import tempfile

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "sqlite"):
            results["sqlite"] = run("sqlite", f"sqlite:///{tmp}/{scratch_name}.sqlite3", tmp, args)
        if args.only in (None, "postgresql"):
            with scratch_postgres(args.postgres, scratch_name) as scratch:
                if scratch is None:
                    print("postgresql: not reachable, skipped")
                else:
                    results["postgresql"] = run("postgresql", scratch, tmp, args)
    return results


def rss_of(pid: int) -> int:
    """A process's resident set, in KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def timed_get(client, url: str, params: dict, samples: list[float], before=None) -> None:
    """One GET through Django's test client (server time in process), in ms; `before` runs
    first, untimed. A non-200 answer stops the benchmark."""
    import time

    if before:
        before()
    started = time.perf_counter()
    response = client.get(url, params)
    if hasattr(response, "streaming_content"):
        b"".join(response.streaming_content)
    samples.append((time.perf_counter() - started) * 1000)
    if response.status_code != 200:
        raise SystemExit(f"{url} answered {response.status_code}")


def report_ms(name: str, samples: list[float], baseline: float | None) -> float:
    """Print p50/p99 (and the p50's ratio to `baseline`); return the p50."""
    import statistics

    samples = sorted(samples)
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    ratio = f"  {p50 / baseline:.2f}× baseline" if baseline else ""
    print(f"  {name:<9} p50 {p50:8.1f} ms  p99 {p99:8.1f} ms{ratio}")
    return p50
