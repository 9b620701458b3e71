#!/usr/bin/env python3
"""Device writes with a webhook subscription against the same writes without one, and the
relay's throughput and lag, on the production server (issue #15).

Per backend (SQLite, then PostgreSQL): the production server with its in-process relay, a
local receiver (scripts/event_receiver.py) and wrk writing from 200 devices. Rounds
alternate: the subscription disabled (no outbox rows, no relay work) and enabled (an outbox
row per write, in the same statement, and the relay delivering while wrk writes). Reported:
writes/s of each and their ratio (goal: enabled >= 80 % of disabled), events delivered per
second during the enabled rounds, and the lag from commit to receipt (p50/p99), then the lag
at a paced ~1,000 writes/s (goal p99 <= 1 s).

    .venv/bin/python scripts/bench_events.py [--seconds 6] [--rounds 3] [--only sqlite]
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import textwrap
import time
from pathlib import Path

import requests
from bench_device_api import WRITE_LUA, WRITERS, wrk
from benchlib import PY, ROOT, backend_options, cpu_seconds, each_backend, processes, seed, start

PACED_LUA = WRITE_LUA + textwrap.dedent(
    """
    function delay()
      return pace_ms
    end
    """
)
ADMIN = "Basic " + base64.b64encode(b"bench@example.com:bench password 1234").decode()


def prepare(env: dict) -> dict:
    code = f"""
        from devices.services import whitelist_device
        tokens = []
        for n in range({WRITERS}):
            whitelist_device(connector, f"writer-{{n}}")
            tokens.append(
                activate_device(connector, f"writer-{{n}}", None, "127.0.0.1", secure=True).body)
        print(json.dumps({{"connector": connector.id, "tokens": tokens}}))
        """
    return seed(env, {"temp": {"format": "number"}}, code)


def wait_until(check, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def run_backend(name: str, database_url: str, data_dir: str, args) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DATA_DIR": data_dir,
        "DEVICE_API_INSECURE": "true",
        "DJANGO_SETTINGS_MODULE": "iotconnector.settings",
        "DEVICE_AUTH_FAILURE_LIMIT": "1000000",
        "EVENTS_RELAY": os.environ.get("BENCH_EVENTS_RELAY", "true"),
        "EVENTS_ALLOW_PRIVATE_URLS": "true",  # the receiver is on loopback
    }
    info = prepare(env)
    port, receiver_port = args.port, args.port + 1
    receiver = subprocess.Popen(
        [str(Path(PY).parent / "uvicorn"), "event_receiver:app", "--app-dir", "scripts"]
        + ["--port", str(receiver_port), "--log-level", "warning", "--no-access-log"],
        cwd=ROOT,
    )
    server = start(env, "iotconnector.asgi", port)
    base = f"http://127.0.0.1:{port}"
    stats_url = f"http://127.0.0.1:{receiver_port}/stats"
    try:
        for url in (f"{base}/healthz", stats_url):
            wait_until(lambda url=url: _ok(url))
        api = f"{base}/api:1/service/{info['connector']}/events/subscription"
        auth = {"Authorization": ADMIN}
        created = requests.post(
            api,
            json={
                "types": ["data_in"],
                # --receiver-down: a port nobody listens on (the relay fails and backs off)
                "webhook": {"url": f"http://127.0.0.1:{receiver_port + args.receiver_down}/"},
                "batch": args.batch,
            },
            headers=auth,
            timeout=30,
        ).json()
        subscription = f"{api}/{created['id']}"

        def backlog() -> int:
            found = requests.get(subscription, headers=auth, timeout=30).json()
            return found["health"]["backlog"]

        def enable(on: bool) -> None:
            requests.patch(subscription, json={"enabled": on}, headers=auth, timeout=30)

        host = f"{info['connector']}.localhost"
        tokens_lua = "tokens = {" + ", ".join(f'"{t}"' for t in info["tokens"]) + "}\n"
        lua_vars = f'host_header = "{host}"\n' + tokens_lua
        runs: dict[str, list[dict]] = {"without": [], "with": []}
        delivered_rates, lags = [], []
        relay_cpu, receiver_cpu, delivered = 0.0, 0.0, 0
        for round_no in range(args.rounds + 1):
            for scenario in ("without", "with"):
                enable(scenario == "with")
                requests.delete(stats_url, timeout=10)
                seconds = args.seconds if round_no else 1
                relay_pids = relay_processes(server.pid)
                cpu_before = cpu_seconds(relay_pids), cpu_seconds([receiver.pid])
                result = wrk(base, seconds, args.connections, [], WRITE_LUA, lua_vars)
                if scenario == "with":
                    wait_until(lambda: backlog() == 0, timeout=args.drain)
                    stats = requests.get(stats_url, timeout=10).json()
                    if round_no:
                        relay_cpu += cpu_seconds(relay_pids) - cpu_before[0]
                        receiver_cpu += cpu_seconds([receiver.pid]) - cpu_before[1]
                        delivered += stats["count"]
                        span = max(stats["last_s"] - stats["first_s"], 1e-3)
                        delivered_rates.append(stats["count"] / span)
                        lags.append(stats)
                if round_no:
                    runs[scenario].append(result)
        # Paced writes, about 1,000/s: the lag an application sees at a steady rate.
        enable(True)
        requests.delete(stats_url, timeout=10)
        pace = lua_vars + f"pace_ms = {args.pace_ms}\n"
        paced = wrk(base, args.seconds, args.paced_connections, [], PACED_LUA, pace)
        wait_until(lambda: backlog() == 0, timeout=args.drain)
        paced_stats = requests.get(stats_url, timeout=10).json()
    finally:
        for process in (server, receiver):
            process.terminate()
            process.wait(30)
    without = statistics.median(r["rps"] for r in runs["without"])
    with_ = statistics.median(r["rps"] for r in runs["with"])
    print(f"{name} (batch {args.batch}):")
    all_without = [round(r["rps"]) for r in runs["without"]]
    all_with = [round(r["rps"]) for r in runs["with"]]
    print(
        f"  writes without a subscription {without:8.0f}/s  (runs {all_without})\n"
        f"  writes with one (webhook)     {with_:8.0f}/s  (runs {all_with})"
        f"  = {with_ / without:.1%} of without"
    )
    rate = statistics.median(delivered_rates)
    print(
        f"  relay, during those rounds: {rate:.0f} events/s delivered;"
        f" lag p50 {statistics.median(s['p50_ms'] for s in lags):.0f} ms,"
        f" p99 {statistics.median(s['p99_ms'] for s in lags):.0f} ms,"
        f" duplicates {sum(s['duplicates'] for s in lags)}"
    )
    per_event = 1e6 / max(delivered, 1)
    print(
        f"  CPU per event delivered: relay {relay_cpu * per_event:.0f} µs,"
        f" receiver {receiver_cpu * per_event:.0f} µs"
    )
    print(
        f"  paced {paced['rps']:.0f} writes/s: {paced_stats['count']} events, lag p50"
        f" {paced_stats['p50_ms']:.0f} ms, p99 {paced_stats['p99_ms']:.0f} ms,"
        f" max {paced_stats['max_ms']:.0f} ms"
    )


def relay_processes(server_pid: int) -> list[int]:
    """The relay process the server started (EVENTS_RELAY=process)."""
    found = []
    for pid in processes(server_pid):
        try:
            if b"relay_events" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code < 500
    except requests.RequestException:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--pace-ms", type=int, default=10, help="pause after each answer")
    parser.add_argument("--paced-connections", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1, help="events per webhook delivery")
    parser.add_argument(
        "--receiver-down",
        action="store_const",
        const=1,
        default=0,
        help="the receiver is down: backpressure (use with --drain 1)",
    )
    parser.add_argument("--drain", type=int, default=120, help="seconds to wait for the backlog")
    backend_options(parser, port=8785)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt install wrk")
    each_backend(args, "bench_events", run_backend)


if __name__ == "__main__":
    main()
