#!/usr/bin/env python
"""Benchmark the HTTP Device API against a no-op Django view, in one run, with wrk.

    .venv/bin/python scripts/bench_device_api.py [--seconds 10] [--connections 32]

For SQLite and PostgreSQL in turn: a fresh database, the documented production server
(gunicorn iotconnector.asgi -c deploy/gunicorn.conf.py), then wrk measures, in interleaved
rounds (medians)
  bare      a bare ASGI app answering 204 under the same gunicorn/uvicorn worker
            (scripts/bare_asgi.py): what the server costs by itself
  baseline  GET /healthz on the management host (a no-op Django view, full middleware stack)
  write     POST /onep:v1/stack/alias, token auth, one defined alias (SPEC §3), 200 devices in turn
  activate  POST /provision/activate, a fresh whitelisted identity per request
and prints requests/s and each ratio to the baseline measured in the same run, and where the
time goes: CPU per request of the server processes (app) and of PostgreSQL's processes (db),
from /proc, and the share of the machine's CPU left idle during the run. wrk comes from
Debian (`apt install wrk`). Nothing here is asserted: it reports.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from benchlib import TICK_S, backend_options, cpu_seconds, each_backend, processes, seed, start

# Writes come from this many devices in turn, as in the field: one device hammering one row
# would measure row-lock waits, not the API.
WRITERS = 200
# Per wrk thread and second of a round: more than it activates (up to 6,000/s per thread).
IDENTITIES_PER_SECOND = 6_000
# Rows per CSV import (the import's own limit is 200,000).
IMPORT_CHUNK = 100_000
WRK_THREADS = 2

WRITE_LUA = textwrap.dedent(
    """
    function init(args)
      counter = 0
    end
    function request()
      counter = counter + 1
      return wrk.format("POST", "/onep:v1/stack/alias", {
        ["Host"] = host_header,
        ["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8",
        ["X-Exosite-CIK"] = tokens[(counter % #tokens) + 1],
      }, "temp=21.5")
    end
    """
)

ACTIVATE_LUA = textwrap.dedent(
    """
    local threads = {}
    function setup(thread)
      thread:set("tid", #threads)
      table.insert(threads, thread)
    end
    function init(args)
      counter = 0
    end
    function request()
      counter = counter + 1
      local body = "id=bench-" .. tid .. "-" .. (first_id + counter)
      return wrk.format("POST", "/provision/activate", {
        ["Host"] = host_header,
        ["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8",
      }, body)
    end
    """
)


def prepare(env: dict, rounds: int, per_round: int) -> dict:
    """Migrate, create a connector, provisioned devices and identities to activate."""
    code = f"""
        from devices.services import whitelist_device
        tokens = []
        for n in range({WRITERS}):
            whitelist_device(connector, f"writer-{{n}}")
            tokens.append(
                activate_device(connector, f"writer-{{n}}", None, "127.0.0.1", secure=True).body)
        per_thread = range(1, {(rounds + 1) * per_round} + 1)
        names = [f"bench-{{t}}-{{n}}" for t in range({WRK_THREADS}) for n in per_thread]
        for start in range(0, len(names), {IMPORT_CHUNK}):
            rows = "ID\\n" + "".join(f"{{n}}\\n" for n in names[start:start + {IMPORT_CHUNK}])
            report = import_identities(connector, io.BytesIO(rows.encode()))
            assert report.ok, report.errors[:3]
        print(json.dumps({{"connector": connector.id, "tokens": tokens}}))
        """
    return seed(env, {"temp": {"format": "number"}}, code)


def idle_seconds() -> tuple[float, float]:
    """The machine's (idle, total) CPU time so far, in seconds."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (values[3] + values[4]) * TICK_S, sum(values[:8]) * TICK_S


def wrk(
    url: str,
    seconds: int,
    connections: int,
    headers: list[str],
    script: str | None,
    lua_vars: str = "",
    measured: dict[str, Callable[[], list[int]]] | None = None,
) -> dict:
    """One wrk run; with `measured` (name -> its processes), their CPU per request, and the
    share of the machine's CPU left idle."""
    args = ["wrk", "-t", str(WRK_THREADS), "-c", str(connections), "-d", f"{seconds}s", "--latency"]
    for header in headers:
        args += ["-H", header]
    tmp = None
    if script:
        tmp = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        tmp.write(lua_vars + script)
        tmp.close()
        args += ["-s", tmp.name]
    pids = {name: find() for name, find in (measured or {}).items()}
    before = {name: cpu_seconds(found) for name, found in pids.items()}
    idle_before, total_before = idle_seconds()
    out = subprocess.run([*args, url], capture_output=True, text=True).stdout
    idle_after, total_after = idle_seconds()
    after = {name: cpu_seconds(found) for name, found in pids.items()}
    if tmp:
        os.unlink(tmp.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+\w+)", out)
    return {
        "rps": rps,
        "non2xx": int(bad.group(1)) if bad else 0,
        "p99": p99.group(1) if p99 else "?",
        "cpu_ms": {name: (after[name] - before[name]) * 1000 / max(requests, 1) for name in pids},
        "idle": (idle_after - idle_before) / max(total_after - total_before, 1e-9),
    }


def median_run(runs: list[dict]) -> dict:
    ordered = sorted(runs, key=lambda r: r["rps"])
    middle = ordered[len(ordered) // 2]
    return {
        **middle,
        "all": [round(r["rps"]) for r in runs],
        "non2xx": sum(r["non2xx"] for r in runs),
    }


def run_backend(name: str, database_url: str, data_dir: str, args) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DATA_DIR": data_dir,
        "DEVICE_API_INSECURE": "true",
        "DJANGO_SETTINGS_MODULE": "iotconnector.settings",
        "DEVICE_AUTH_FAILURE_LIMIT": "1000000",
    }
    per_round = args.seconds * IDENTITIES_PER_SECOND
    info = prepare(env, args.rounds, per_round)
    host = f"{info['connector']}.localhost"
    port = args.port
    server = start(env, "iotconnector.asgi", port)
    bare = start(env, "scripts.bare_asgi:app", port + 1)
    try:
        for url in (f"http://127.0.0.1:{port}/healthz", f"http://127.0.0.1:{port + 1}/"):
            for _ in range(100):
                try:
                    urllib.request.urlopen(url, timeout=1)  # noqa: S310
                    break
                except OSError:
                    time.sleep(0.2)
        base = f"http://127.0.0.1:{port}"
        write = WRITE_LUA
        tokens_lua = "tokens = {" + ", ".join(f'"{t}"' for t in info["tokens"]) + "}\n"
        scenarios = {
            "bare": (f"http://127.0.0.1:{port + 1}/", None, ""),
            "baseline": (base + "/healthz", None, ""),
            "write": (base, write, f'host_header = "{host}"\n' + tokens_lua),
            "activate": (base, ACTIVATE_LUA, f'host_header = "{host}"\n'),
        }
        runs: dict[str, list[dict]] = {scenario: [] for scenario in scenarios}
        # Only one of the two servers is busy at a time: both count as the app.
        measured = {"app": lambda: processes(parent=server.pid) + processes(parent=bare.pid)}
        if database_url.startswith("postgres"):
            measured["db"] = lambda: processes(name="postgres")
        # Interleaved rounds (round 0 is a short warm-up), medians reported: a noisy
        # neighbour then skews every scenario alike. Each round activates fresh identities.
        for round_no in range(args.rounds + 1):
            for scenario, (url, script, lua_vars) in scenarios.items():
                lua = lua_vars + f"first_id = {round_no * per_round}\n"
                seconds = args.seconds if round_no else 1
                result = wrk(url, seconds, args.connections, [], script, lua, measured)
                if round_no:
                    runs[scenario].append(result)
        results = {scenario: median_run(found) for scenario, found in runs.items()}
    finally:
        for process in (server, bare):
            process.terminate()
            process.wait(30)
    baseline, bare_rps = results["baseline"]["rps"], results["bare"]["rps"]
    print(f"{name}:")
    for key, result in results.items():
        ratio = result["rps"] / baseline
        note = f", {result['non2xx']} non-2xx" if result["non2xx"] else ""
        cpu = "  ".join(f"{name} {ms:.3f}" for name, ms in result["cpu_ms"].items())
        print(
            f"  {key:9s} {result['rps']:9.0f} req/s  {ratio:6.1%} of baseline  "
            f"{result['rps'] / bare_rps:6.1%} of bare  "
            f"p99 {result['p99']}  (runs: {result['all']}){note}\n"
            f"  {'':9s} CPU ms/request: {cpu}  idle {result['idle']:.0%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    backend_options(parser, port=8765)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt install wrk")
    workers = os.environ.get("WEB_CONCURRENCY") or f"{os.cpu_count()} (1 per core; 1 on SQLite)"
    print(
        f"gunicorn iotconnector.asgi -c deploy/gunicorn.conf.py: {workers} workers; "
        f"wrk {WRK_THREADS} threads, {args.connections} connections, "
        f"{args.rounds} interleaved rounds of {args.seconds} s"
    )
    each_backend(args, "bench_device_api", run_backend)


if __name__ == "__main__":
    main()
