#!/usr/bin/env python
"""What one PUBLISH costs the MQTT gateway's event loop, with no network and no database.

    .venv/bin/python scripts/bench_mqtt_loop.py [--publishes 20000] [--profile]

A fresh SQLite database with one MQTT connector and device, a real TLS session in memory
(the server side is the gateway's own `provisioning.mqtt.tls`, the client is Python's `ssl`
on memory buffers), and one gateway `Session` whose store answers every job at once. Each
QoS 1 PUBLISH is one TLS record fed to `Session.data_received`; the loop then runs the
store's answer and the PUBACK. Reported: µs per PUBLISH, and beside it the same loop turns
with nothing to do (the baseline of the run), so the difference is the gateway's own work:
TLS, the packet, the write's checks and job, the PUBACK. `--profile` prints where it goes.
Nothing here is asserted: it reports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import struct
import sys
import tempfile
import time
from pathlib import Path

from bench_mqtt import seed_devices
from benchlib import ROOT

sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--publishes", type=int, default=20_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {"DATABASE_URL": f"sqlite:///{tmp}/loop.sqlite3", "DATA_DIR": tmp}
        env |= {"DJANGO_SETTINGS_MODULE": "iotconnector.settings"}
        env |= {"MQTT_PUBLISH_RATE": "1000000000", "MQTT_PUBLISH_BURST": "1000000000"}
        seeded = seed_devices({**os.environ, **env}, 1)
        os.environ.update(env)
        run(seeded["id"], Path(tmp), args)


def run(connector_id: str, tmp: Path, args) -> None:
    import django

    django.setup()
    import uvloop

    from devices.models import Device
    from provisioning import auth, connectors, tlsstack
    from provisioning.jobs import STORED
    from provisioning.mqtt import codec, gateway, tls

    host = f"{connector_id}.localhost"
    cert, key = tlsstack.server_certificate(tmp, [host])
    connectors.load(connector_id, "127.0.0.1")
    row = auth.by_id(connector_id, "127.0.0.1", Device.objects.get().id)

    class Front:  # the store: every job stored at once
        class device_api:
            stored = STORED

        def store(self, job):
            future = asyncio.get_running_loop().create_future()
            future.set_result(STORED)
            return future

        def answered(self, pending, outcome):
            return pending.answer

    class Transport:
        def __init__(self):
            self.out: list[bytes] = []

        def write(self, data):
            self.out.append(data)

        def get_write_buffer_size(self):
            return 0

        def get_extra_info(self, name):
            return ("127.0.0.1", 40000)

        def set_write_buffer_limits(self, high):
            pass

        def pause_reading(self):
            pass

        def resume_reading(self):
            pass

        def close(self):
            pass

    async def measure():
        gw = gateway.Gateway(Front(), tls.Credentials(str(cert), str(key)), "127.0.0.1", 0)
        session, transport = gateway.Session(gw), Transport()
        session.connection_made(transport)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        context = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
        client = context.wrap_bio(incoming, outgoing, server_hostname=host)
        while True:  # the handshake, through the session
            try:
                client.do_handshake()
                break
            except ssl.SSLWantReadError:
                session.data_received(outgoing.read())
                for chunk in transport.out:
                    incoming.write(chunk)
                transport.out.clear()
        session.device, session.state, session.opened = row, gateway.OPEN, True
        count = args.publishes
        records = []
        for n in range(2 * count):
            body = codec._string("$resource/temp") + struct.pack("!H", n % 65000 + 1)
            client.write(codec._packet(0x32, body + b"%d" % (n % 100)))
            records.append(outgoing.read())
        transport.out.clear()

        async def turns(feed) -> float:
            started = time.perf_counter()
            for record in feed:
                if record is not None:
                    session.data_received(record)
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            return (time.perf_counter() - started) / len(feed) * 1e6

        idle = await turns([None] * count)
        took = await turns(records[:count])
        # A write each: the PUBACKs, and first the session tickets TLS 1.3 sends once.
        if not count <= len(transport.out) <= count + 1:
            raise SystemExit(f"{len(transport.out)} answers to {count} PUBLISHes")
        print(f"loop turns alone (baseline)  {idle:6.1f} µs")
        print(f"per PUBLISH                  {took:6.1f} µs  ({took / idle:.1f}× the baseline;")
        print(f"                             the gateway's own work: {took - idle:.1f} µs)")
        if args.profile:
            import cProfile
            import pstats

            profile = cProfile.Profile()
            profile.enable()
            await turns(records[count:])
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)

    uvloop.run(measure())


if __name__ == "__main__":
    main()
