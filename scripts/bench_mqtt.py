#!/usr/bin/env python
"""Benchmark the MQTT Device API against the HTTP one, in one run (issue #16).

    .venv/bin/python scripts/bench_mqtt.py [--idle 20000] [--devices 1000] [--seconds 10]

For SQLite and PostgreSQL in turn: a fresh database with provisioned token devices, the
documented production server (gunicorn iotconnector.asgi -c deploy/gunicorn.conf.py) with
MQTT over TLS on the local CA's certificate, then, from one asyncio client process:

  http      token writes (POST /onep:v1/stack/alias) from the same --devices, each on its
            own keep-alive connection waiting for its answer: the reference of the run
  publish   QoS 1 PUBLISH $resource/temp from --devices connected devices, each waiting
            for its PUBACK (sent after the commit) before the next: PUBACKs/s, ratio to http
  storm     --storm devices connecting at once (TLS handshake + CONNECT): sessions/s,
            refused ones
  idle      --idle sessions held open and idle: RSS of the one server process per session
  downlink  cloud sets (PATCH …/identity/<id>/state) to connected devices spread over two
            server processes (PostgreSQL): latency to the device's PUBLISH, p50/p99

Nothing here is asserted: it reports. The client shares the machine's two cores with the
server, for HTTP and MQTT alike.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import ssl
import statistics
import struct
import sys
import time
from pathlib import Path

from benchlib import ROOT, TICK_S, backend_options, cpu_seconds, each_backend, seed, start

sys.path.insert(0, str(ROOT))

from provisioning.mqtt import codec  # noqa: E402


def seed_devices(env: dict, count: int) -> dict:
    code = f"""
    from connector import keys
    from connector.models import MQTT_PROTOCOL
    from devices.models import Device
    connector.protocol_name = MQTT_PROTOCOL
    connector.save()
    tokens = [keys.new_token(40) for _ in range({count})]
    Device.objects.bulk_create(
        [
            Device(connector=connector, identity=f"d{{n:06d}}", state="provisioned",
                   auth_type="token", secret_hash=keys.keyed_hash(token))
            for n, token in enumerate(tokens)
        ],
        batch_size=2000,
    )
    print(json.dumps({{"id": connector.id, "tokens": tokens}}))
    """
    resources = {"temp": {"format": "number"}, "setpoint": {"settable": True}}
    return seed(env, resources, code)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def connect_packet(token: str) -> bytes:
    flags = 0x80 | 0x40 | 0x02  # user name, password, clean session
    body = codec._string("MQTT") + bytes([4, flags]) + struct.pack("!H", 300)
    body += codec._string("") + codec._string("") + codec._string(token)
    return codec._packet(0x10, body)


class Client(asyncio.Protocol):
    """A minimal MQTT device: CONNECT, QoS 1 PUBLISH one at a time, downlink PUBLISHes."""

    def __init__(self):
        self.buffer = bytearray()
        self.connack: asyncio.Future = asyncio.get_running_loop().create_future()
        self.acked: asyncio.Future | None = None
        self.downlink: asyncio.Queue = asyncio.Queue()
        self.closed = False
        self.next_id = 0
        self.in_flight = 0

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.closed = True
        if not self.connack.done():
            self.connack.set_result(-1)

    def data_received(self, data):
        self.buffer += data
        while len(self.buffer) >= 2:
            length, shift, at = 0, 0, 1
            while True:
                if at >= len(self.buffer):
                    return
                byte = self.buffer[at]
                length |= (byte & 0x7F) << shift
                at += 1
                if not byte & 0x80:
                    break
                shift += 7
            if len(self.buffer) < at + length:
                return
            kind, body = self.buffer[0] >> 4, bytes(self.buffer[at : at + length])
            del self.buffer[: at + length]
            if kind == codec.CONNACK and not self.connack.done():
                self.connack.set_result(body[1])
            elif kind == codec.PUBACK:
                self.in_flight -= 1
                if self.acked is not None and not self.acked.done():
                    self.acked.set_result(None)
            elif kind == codec.PUBLISH:
                size = struct.unpack("!H", body[:2])[0]
                topic = body[2 : 2 + size].decode()
                self.downlink.put_nowait((time.monotonic(), topic))

    async def publish(self, topics_payloads: list[tuple[str, bytes]]) -> None:
        """PUBLISH these at QoS 1 back to back (an in-flight window, as paho-mqtt keeps up
        to 20), then wait until every one is acknowledged."""
        packets = []
        for topic, payload in topics_payloads:
            self.next_id = self.next_id % 65535 + 1
            packets.append(codec.encode_publish(topic, payload, 1, self.next_id))
        self.in_flight += len(packets)
        self.transport.write(b"".join(packets))
        while self.in_flight and not self.closed:
            self.acked = asyncio.get_running_loop().create_future()
            await self.acked


FAILED: collections.Counter = collections.Counter()  # why sessions did not open, per phase


async def open_session(host, port, context, token) -> Client | None:
    loop = asyncio.get_running_loop()
    try:
        _t, client = await loop.create_connection(
            Client, "127.0.0.1", port, ssl=context, server_hostname=host
        )
    except (OSError, ssl.SSLError) as exc:
        FAILED[f"{type(exc).__name__}: {exc}"[:80]] += 1
        return None
    client.transport.write(connect_packet(token))
    code = await client.connack
    if code != 0:
        FAILED["closed before CONNACK" if code == -1 else f"CONNACK {code}"] += 1
    return client if code == 0 else None


async def connect_many(host, port, context, tokens, concurrency) -> tuple[list, float]:
    gate = asyncio.Semaphore(concurrency)

    async def one(token):
        async with gate:
            return await open_session(host, port, context, token)

    started = time.perf_counter()
    clients = await asyncio.gather(*(one(t) for t in tokens))
    return clients, time.perf_counter() - started


async def http_writes(port, host, tokens, seconds, connections) -> float:
    """Token writes per second over keep-alive HTTP/1.1 connections."""
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(n):
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = n
        while time.monotonic() < deadline:
            body = b"temp=%d" % (i % 100)
            token = tokens[i % len(tokens)]
            i += connections
            writer.write(
                (
                    f"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: {host}\r\n"
                    f"X-Exosite-CIK: {token}\r\nContent-Type: application/x-www-form-urlencoded;"
                    f" charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode()
                + body
            )
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if length:
                await reader.readexactly(length)
            if b" 204 " in status:
                done += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(connections)))
    return done / (time.perf_counter() - started)


async def mqtt_publishes(clients, seconds, window: int = 1) -> float:
    done = 0
    deadline = time.monotonic() + seconds

    async def loop(client, n):
        nonlocal done
        while time.monotonic() < deadline and not client.closed:
            batch = [("$resource/temp", b"%d" % ((n + k) % 100)) for k in range(window)]
            await client.publish(batch)
            done += window
            n += window

    started = time.perf_counter()
    await asyncio.gather(*(loop(c, n) for n, c in enumerate(clients)))
    return done / (time.perf_counter() - started)


async def downlink(clients, identities, rounds) -> list[float]:
    """Cloud sets from this process (devices.services.set_state, as the management API and
    the device page make them); ms until the device's PUBLISH arrives."""
    from devices.models import Device
    from devices.services import set_state

    rows = await asyncio.to_thread(
        lambda: {d.identity: d for d in Device.objects.filter(identity__in=identities)}
    )
    latencies = []
    for n in range(rounds):
        client, identity = clients[n % len(clients)], identities[n % len(clients)]
        while not client.downlink.empty():
            client.downlink.get_nowait()
        sent = time.monotonic()
        await asyncio.to_thread(set_state, rows[identity], {"setpoint": str(n)})
        try:
            received, _topic = await asyncio.wait_for(client.downlink.get(), 5)
        except TimeoutError:
            continue
        latencies.append((received - sent) * 1000)
    return latencies


def pct(values, q):
    return sorted(values)[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


def run_backend(name: str, database_url: str, data_dir: str, args) -> dict:
    from provisioning import tlsstack

    env = {**os.environ, "DATABASE_URL": database_url, "DATA_DIR": data_dir}
    env |= {"DJANGO_SETTINGS_MODULE": "iotconnector.settings"}
    env |= {"EVENTS_RELAY": "off", "DEVICE_API_INSECURE": "true"}
    total = max(args.idle, args.devices, args.storm)
    seeded = seed_devices(env, total)
    cid, tokens = seeded["id"], seeded["tokens"]
    host = f"{cid}.localhost"
    tls_dir = Path(data_dir) / "tls"
    tls_dir.mkdir(exist_ok=True)
    cert, key = tlsstack.server_certificate(tls_dir, [host])
    context = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))
    results: dict = {"window_size": args.window}

    def server(workers: int):
        mqtt_env = {
            **env,
            "WEB_CONCURRENCY": str(workers),
            "MQTT_PORT": str(args.mqtt_port),
            "MQTT_TLS_CERT": str(cert),
            "MQTT_TLS_KEY": str(key),
            "MQTT_MAX_PER_IP": str(total + 10),
            "MQTT_PUBLISH_RATE": "100000",
            "MQTT_PUBLISH_BURST": "100000",
            "MQTT_CONNECT_TIMEOUT": "120",
            "LONG_POLL_MAX_WAITING": "100000",
        }
        process = start(mqtt_env, "iotconnector.asgi", args.port)
        for _ in range(300):
            try:
                import urllib.request

                urllib.request.urlopen(f"http://127.0.0.1:{args.port}/healthz", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(0.5)
        return process

    async def one_process():
        process = server(1)
        try:
            worker = [p for p in _children(process.pid)][0]
            connections = args.http_connections or args.devices  # as MQTT: one per device
            results["http"] = await http_writes(
                args.port, host, tokens[: args.devices], args.seconds, connections
            )
            clients, took = await connect_many(
                host, args.mqtt_port, context, tokens[: args.devices], 200
            )
            live = [c for c in clients if c]
            threads, started = thread_cpu(worker), time.perf_counter()
            results["publish"] = await mqtt_publishes(live, args.seconds)
            elapsed = time.perf_counter() - started
            after = thread_cpu(worker)
            loop_cpu = (after.pop(worker, 0) - threads.pop(worker, 0)) / elapsed
            rest = (sum(after.values()) - sum(threads.get(t, 0) for t in after)) / elapsed
            results["publish_threads"] = (loop_cpu, rest)
            if args.window > 1:
                results["window"] = await mqtt_publishes(live, args.seconds, args.window)
            for c in live:
                c.transport.close()
            await asyncio.sleep(2)
            # Connect storm: all at once.
            FAILED.clear()
            cpu = cpu_seconds([worker]), cpu_seconds([os.getpid()])
            clients, took = await connect_many(
                host, args.mqtt_port, context, tokens[: args.storm], args.storm
            )
            ok = [c for c in clients if c]
            spent = cpu_seconds([worker]) - cpu[0], cpu_seconds([os.getpid()]) - cpu[1]
            results["storm"] = (len(ok) / took, args.storm - len(ok), dict(FAILED))
            results["storm_cpu"] = tuple(1000 * seconds / max(1, len(ok)) for seconds in spent)
            FAILED.clear()
            for c in ok:
                c.transport.close()
            await asyncio.sleep(3)
            before = rss_kb(worker)
            FAILED.clear()
            clients, took = await connect_many(
                host, args.mqtt_port, context, tokens[: args.idle], 500
            )
            held = [c for c in clients if c]
            await asyncio.sleep(3)
            after = rss_kb(worker)
            per = (after - before) / max(1, len(held))
            results["idle"] = (len(held), per, after, dict(FAILED))
            for c in held:
                c.transport.close()
        finally:
            process.terminate()
            process.wait(60)

    async def two_processes():
        process = server(2)
        try:
            count = min(50, args.devices)
            clients, _took = await connect_many(host, args.mqtt_port, context, tokens[:count], 50)
            pairs = [(c, f"d{n:06d}") for n, c in enumerate(clients) if c]
            await asyncio.sleep(1)
            results["downlink"] = await downlink(
                [c for c, _ in pairs], [i for _, i in pairs], args.rounds
            )
            for c, _ in pairs:
                c.transport.close()
        finally:
            process.terminate()
            process.wait(60)

    asyncio.run(one_process())
    if name == "postgresql":
        import django

        os.environ.update(env)
        django.setup()
        asyncio.run(two_processes())
    report(name, results)
    return results


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of each thread of the process (the loop's is the one id'd `pid`)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(task.name)] = (int(fields[11]) + int(fields[12])) * TICK_S
    return found


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[1]) == pid and b"relay_events" not in cmdline:
                found.append(int(entry.name))
    return found


def report(name: str, r: dict) -> None:
    print(f"\n{name}")
    print(f"  http token writes     {r['http']:8.0f}/s   (reference)")
    print(f"  mqtt QoS 1 publishes  {r['publish']:8.0f}/s   {r['publish'] / r['http']:.2f}x http")
    loop_cpu, rest = r["publish_threads"]
    print(f"{'':24}server CPU: loop thread {loop_cpu:.2f} cores, the others {rest:.2f}")
    if "window" in r:
        w = r["window"]
        print(f"  … {r['window_size']} in flight  {w:8.0f}/s   {w / r['http']:.2f}x http")
    rate, refused, why = r["storm"]
    print(f"  connect storm         {rate:8.0f} sessions/s, {refused} did not open {why or ''}")
    server_ms, client_ms = r["storm_cpu"]
    print(f"{'':24}CPU per session: server {server_ms:.2f} ms, client {client_ms:.2f} ms")
    held, per, total_kb, why = r["idle"]
    worker_mb = total_kb / 1024
    print(f"  idle sessions         {held} held, {per:.1f} KB RSS each (worker {worker_mb:.0f} MB)")
    if why:
        print(f"                        did not open: {why}")
    if "downlink" in r:
        lat = r["downlink"]
        p50, p99 = statistics.median(lat), pct(lat, 0.99)
        print(f"  downlink (2 procs)    p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(lat)} sets)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    backend_options(parser, port=8765)
    parser.add_argument("--mqtt-port", type=int, default=8893)
    parser.add_argument("--idle", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--storm", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument(
        "--http-connections", type=int, help="keep-alive connections (default: one per device)"
    )
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument(
        "--window", type=int, default=10, help="QoS 1 PUBLISHes in flight per device, 2nd run"
    )
    args = parser.parse_args()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    each_backend(args, "bench_mqtt", run_backend)


if __name__ == "__main__":
    main()
