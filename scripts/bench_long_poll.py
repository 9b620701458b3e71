#!/usr/bin/env python
"""Benchmark long polls: thousands held by one server process, and how fast a write wakes one.

    .venv/bin/python scripts/bench_long_poll.py [--polls 5000] [--wakes 500]

For SQLite in one server process (polls and writes on it), SQLite across two (polls held by the
first, writes sent to the second: wake-ups cross over datagrams) and PostgreSQL across two
(through LISTEN/NOTIFY), each with the documented production command (gunicorn
iotconnector.asgi with deploy/gunicorn.conf.py, one worker per server here):
  1. every device opens a poll (`Request-Timeout: 120000`) on its own alias; the script waits
     until the server reports them all parked (/healthz), then reads the worker's RSS;
  2. `--wakes` times, one device writes its alias and the script measures from the write's
     response to its poll's response (the poll's own connection, already open);
  3. the remaining polls disconnect, and the server must report none left.
Nothing is asserted: it reports (the issue's floors: < 250 MB RSS, p99 < 100 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from benchlib import PY, ROOT, backend_options, scratch_postgres, seed


def prepare(env: dict, devices: int) -> dict:
    """Migrate; a connector with alias `cmd`; `devices` provisioned devices and their tokens."""
    code = f"""
        rows = "ID\\n" + "".join(f"poller-{{n}}\\n" for n in range({devices}))
        assert import_identities(connector, io.BytesIO(rows.encode())).ok
        tokens = [
            activate_device(connector, f"poller-{{n}}", None, "127.0.0.1", secure=True).body
            for n in range({devices})
        ]
        print(json.dumps({{"connector": connector.id, "tokens": tokens}}))
        """
    return seed(env, {"cmd": {"format": "number"}}, code)


class Server:
    def __init__(self, env: dict, port: int):
        self.port = port
        self.process = subprocess.Popen(
            [
                str(Path(PY).parent / "gunicorn"),
                "iotconnector.asgi",
                "-c",
                "deploy/gunicorn.conf.py",
            ]
            + ["--bind", f"127.0.0.1:{port}", "--access-logfile", "/dev/null"],
            env={**env, "WEB_CONCURRENCY": "1"},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(150):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)  # noqa: S310
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("the server did not start")

    def health(self) -> int:
        """Polls parked in the worker (-1 while it is too busy to answer)."""
        url = f"http://127.0.0.1:{self.port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310
                return int(response.read().decode().split("waiting_polls ")[1])
        except TimeoutError:
            return -1

    def worker_rss_mb(self) -> float:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        worker = children.read_text().split()[0]
        for line in Path(f"/proc/{worker}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return status, await reader.readexactly(length) if length else b""


async def run(args, host: str, tokens: list[str], poll_port: int, write_port: int, server):
    loop = asyncio.get_running_loop()
    answered: dict[int, asyncio.Future] = {}
    sockets = []

    async def poll(n: int, token: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", poll_port)
        sockets.append(writer)
        writer.write(
            (
                f"GET /onep:v1/stack/alias?cmd HTTP/1.1\r\nHost: {host}\r\n"
                f"X-Exosite-CIK: {token}\r\nRequest-Timeout: 120000\r\n\r\n"
            ).encode()
        )
        status, body = await read_response(reader)
        answered[n].set_result((loop.time(), status, body))

    started = time.monotonic()
    tasks = []
    for n, token in enumerate(tokens):
        answered[n] = loop.create_future()
        tasks.append(asyncio.create_task(poll(n, token)))
        if n % 200 == 199:
            await asyncio.sleep(0.05)  # connect in bursts, not one SYN flood
    while (parked := await asyncio.to_thread(server.health)) < len(tokens):
        if time.monotonic() - started > 300:
            raise SystemExit(f"only {parked} of {len(tokens)} polls parked")
        await asyncio.sleep(0.2)
    park_s = time.monotonic() - started
    rss = server.worker_rss_mb()

    reader, writer = await asyncio.open_connection("127.0.0.1", write_port)
    latencies = []
    wrong = 0
    for n in range(args.wakes):
        body = f"cmd={n}".encode()
        writer.write(
            (
                f"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: {host}\r\n"
                f"X-Exosite-CIK: {tokens[n]}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        status, _ = await read_response(reader)
        written = loop.time()
        arrived, poll_status, poll_body = await asyncio.wait_for(answered[n], 10)
        latencies.append(max(arrived - written, 0.0) * 1000)
        wrong += status != 204 or poll_status != 200 or poll_body != body
        await asyncio.sleep(0.005)
    writer.close()

    for sock in sockets:
        sock.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    deadline = time.monotonic() + 30
    while (left := await asyncio.to_thread(server.health)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    latencies.sort()
    return {
        "parked": len(tokens),
        "park_s": park_s,
        "rss_mb": rss,
        "p50": statistics.median(latencies),
        "p99": latencies[int(len(latencies) * 0.99) - 1],
        "max": latencies[-1],
        "worst": [round(x, 1) for x in latencies[-5:]],
        "wrong": wrong,
        "left": left,
    }


def backend(name: str, env: dict, args, two_processes: bool) -> None:
    info = prepare(env, args.polls)
    host = f"{info['connector']}.localhost"
    polls = Server(env, args.port)
    writes = Server(env, args.port + 1) if two_processes else polls
    try:
        result = asyncio.run(
            run(args, host, info["tokens"], polls.port, writes.port, polls),
        )
    finally:
        polls.stop()
        if writes is not polls:
            writes.stop()
    where = "polls on one process, writes on another" if two_processes else "one process"
    print(
        f"{name} ({where}): {result['parked']} polls parked in {result['park_s']:.1f} s; "
        f"worker RSS {result['rss_mb']:.0f} MB\n"
        f"  wake-up, write response -> poll response, {args.wakes} writes: "
        f"p50 {result['p50']:.1f} ms  p99 {result['p99']:.1f} ms  max {result['max']:.1f} ms"
        f" (worst five: {result['worst']})"
        f"  {result['wrong']} wrong answers\n"
        f"  after the clients disconnected: {result['left']} polls left on the server"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=5000)
    parser.add_argument("--wakes", type=int, default=500)
    backend_options(parser, port=8775)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "DATA_DIR": tmp,
            "DEVICE_API_INSECURE": "true",
            "DJANGO_SETTINGS_MODULE": "iotconnector.settings",
        }
        if args.only in (None, "sqlite"):
            for two in (False, True):
                db = f"sqlite:///{tmp}/bench-{int(two)}.sqlite3"
                backend("sqlite", {**env, "DATABASE_URL": db}, args, two)
        if args.only in (None, "postgresql"):
            with scratch_postgres(args.postgres, "bench_long_poll") as url:
                if url is None:
                    print("postgresql: not reachable, skipped")
                    return
                backend("postgresql", {**env, "DATABASE_URL": url}, args, True)


if __name__ == "__main__":
    main()
