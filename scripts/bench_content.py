#!/usr/bin/env python
"""The content area under load (issue #17), on the embedded default (filesystem store).

    .venv/bin/python scripts/bench_content.py [--devices 100] [--mib 64] [--items 10000]

One server process (gunicorn, one worker, as `scripts/serve` runs it) in a scratch DATA_DIR:
- upload one `--mib` item through the descriptor, streamed from disk by curl: the worker's
  RSS growth while it arrives;
- `--devices` devices download it at once with curl (one process each, so the client side
  is C), a tenth of them in two halves resumed with `curl -C -`: MB/s, the worker's peak
  RSS over its idle RSS, and every file checked byte for byte (sha256);
- the same downloads from nginx serving the same file with sendfile, in the same run, as
  the reference (when nginx is installed);
- listing `--items` items: the device's `GET /provision/download` and the management API's
  `GET …/content/item` (and `?full=true`), median server time against `/timestamp`.
Reports only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from benchlib import ROOT, rss_of, seed, start

PORT = 8761
NGINX_PORT = 8762


def seeded(env: dict, devices: int, items: int) -> dict:
    code = f"""
    from connector import keys
    from connector.models import ContentItem
    from devices.models import Device
    connector.devmode = True
    connector.save()
    tokens = [keys.new_token(40) for _ in range({devices})]
    Device.objects.bulk_create(
        [Device(connector=connector, identity=f"d{{n:04d}}", state="provisioned",
                auth_type="token", secret_hash=keys.keyed_hash(t)) for n, t in enumerate(tokens)]
    )
    listed = create_connector(user, "listing")
    listed.devmode = True
    listed.save()
    ContentItem.objects.bulk_create(
        [ContentItem(connector=listed, name=f"item-{{n:05d}}.bin", size=n, sha256="0" * 64,
                     content_type="application/octet-stream", blob="none",
                     description=f"item {{n}}")
         for n in range({items})],
        batch_size=2000,
    )
    Device.objects.create(connector=listed, identity="lister", state="provisioned",
                          auth_type="token", secret_hash=keys.keyed_hash(tokens[0]))
    print(json.dumps({{"id": connector.id, "listed": listed.id, "tokens": tokens}}))
    """
    return seed(env, {}, code)


class Sampler:
    """The worker's RSS, sampled every 20 ms, while a step runs."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.running = pid, 0, True
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while self.running:
            self.peak = max(self.peak, rss_of(self.pid))
            time.sleep(0.02)

    def __enter__(self):
        self.peak = rss_of(self.pid)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def worker_of(server: subprocess.Popen) -> int:
    for _ in range(100):
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise SystemExit("no worker")


def wait_up(url: str) -> None:
    for _ in range(200):
        if subprocess.run(["curl", "-sf", "-o", "/dev/null", url]).returncode == 0:
            return
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def downloads(url: str, host: str, tokens: list[str], size: int, expected: str, tmp: Path):
    """Every device at once; each tenth one in two halves (`-r`, then `-C -`)."""
    started = time.perf_counter()
    running = []
    for n, token in enumerate(tokens):
        base = ["curl", "-s", "-H", f"X-Exosite-CIK: {token}", "-H", f"Host: {host}"]
        if n % 10 == 9:
            target = tmp / f"resumed-{n}"
            half = size // 2 + n
            first = shlex.join([*base, "-r", f"0-{half - 1}", "-o", str(target), url])
            rest = shlex.join([*base, "-C", "-", "-o", str(target), url])
            script = f"{first} && {rest}"
            running.append(("resumed", target, subprocess.Popen(["sh", "-c", script])))
        else:
            command = [*base, "-o", "/dev/null", "-w", "%{size_download}", url]
            running.append(("whole", None, subprocess.Popen(command, stdout=subprocess.PIPE)))
    total, bad = 0, 0
    for kind, target, process in running:
        out, _ = process.communicate()
        if kind == "whole":
            got = int(out or 0)
            bad += got != size
            total += got
        else:
            data = target.read_bytes()
            bad += hashlib.sha256(data).hexdigest() != expected
            total += len(data)
            target.unlink()
    return total, time.perf_counter() - started, bad


def nginx_reference(file: Path, tokens: list[str], size: int, expected: str, tmp: Path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        return None
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
events {{ worker_connections 1024; }}
http {{ access_log off; sendfile on; client_body_temp_path {tmp};
  server {{ listen 127.0.0.1:{NGINX_PORT}; root {file.parent};
    location / {{ }} }} }}"""
    )
    process = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp)])
    try:
        url = f"http://127.0.0.1:{NGINX_PORT}/{file.name}"
        wait_up(url)
        return downloads(url, "ref", tokens, size, expected, tmp)
    finally:
        process.terminate()
        process.wait(10)


def median_ms(command: list[str], runs: int = 15) -> float:
    times = []
    for _ in range(runs):
        out = subprocess.run(
            [*command, "-s", "-o", "/dev/null", "-w", "%{time_total}"],
            capture_output=True,
            text=True,
        )
        times.append(float(out.stdout) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--items", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "iotconnector.settings",
            "DATA_DIR": str(tmp / "data"),
            "DATABASE_URL": f"sqlite:///{tmp}/bench.sqlite3",
            "MQTT_PORT": "0",
            "EVENTS_RELAY": "off",
            "DEBUG": "false",
            "CONTENT_MAX_BYTES": str(args.mib * 1024 * 1024),
        }
        found = seeded(env, args.devices, args.items)
        image = tmp / "image.bin"
        with image.open("wb") as out:
            for _ in range(args.mib):
                out.write(os.urandom(1024 * 1024))
        size = image.stat().st_size
        expected = hashlib.sha256(image.read_bytes()).hexdigest()
        server = start(env, "iotconnector.asgi", PORT)
        try:
            wait_up(f"http://127.0.0.1:{PORT}/healthz")
            worker = worker_of(server)
            report(args, found, env, worker, image, size, expected, tmp)
        finally:
            server.terminate()
            server.wait(30)


def report(args, found, env, worker, image, size, expected, tmp) -> None:
    api = f"http://127.0.0.1:{PORT}/api:1/service/{found['id']}/content/item"
    auth = ["-u", "bench@example.com:bench password 1234"]
    host = f"{found['id']}.localhost"
    device_url = f"http://127.0.0.1:{PORT}/provision/download?id=image.bin"
    # Warm up: a device call and a management call, so idle RSS counts a working process.
    subprocess.run(["curl", "-s", "-o", "/dev/null", *auth, api], check=True)
    idle = rss_of(worker)
    descriptor = json.loads(
        subprocess.run(
            ["curl", "-s", *auth, f"{api}/image.bin/upload?sha256={expected}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    with Sampler(worker) as upload_rss:
        started = time.perf_counter()
        posted = subprocess.run(
            ["curl", "-s", "-w", "\n%{http_code}", "-F", f"file=@{image}", descriptor["url"]],
            capture_output=True,
            text=True,
        )
        upload_s = time.perf_counter() - started
    status = posted.stdout.rsplit("\n", 1)[-1]
    print(f"upload {args.mib} MiB through the app: {status} in {upload_s:.2f} s, worker RSS")
    print(f"  +{(upload_rss.peak - idle) / 1024:.1f} MB over idle ({idle / 1024:.1f} MB)")
    if status != "201":
        raise SystemExit(posted.stdout)
    idle = rss_of(worker)
    with Sampler(worker) as download_rss:
        total, seconds, bad = downloads(device_url, host, found["tokens"], size, expected, tmp)
    rate = total / seconds / 1e6
    print(
        f"{args.devices} devices downloading {args.mib} MiB at once (a tenth resumed with"
        f" -C -): {rate:,.0f} MB/s, {total / 1e9:.2f} GB in {seconds:.1f} s, {bad} wrong"
    )
    print(
        f"  worker RSS +{(download_rss.peak - idle) / 1024:.1f} MB over idle"
        f" ({idle / 1024:.1f} MB; goal <= 20 MB)"
    )
    reference = nginx_reference(image, found["tokens"], size, expected, tmp)
    if reference is not None:
        ref_total, ref_seconds, ref_bad = reference
        ref_rate = ref_total / ref_seconds / 1e6
        print(
            f"  nginx sendfile, same downloads: {ref_rate:,.0f} MB/s ({ref_bad} wrong);"
            f" the app at {rate / ref_rate:.2f}x of it"
        )
    lister = [
        "-H",
        f"X-Exosite-CIK: {found['tokens'][0]}",
        "-H",
        f"Host: {found['listed']}.localhost",
    ]
    issued = subprocess.run(
        [
            "curl",
            "-s",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps({"email": "bench@example.com", "password": "bench password 1234"}),
            f"http://127.0.0.1:{PORT}/api:1/token/",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    token = ["-H", f"Authorization: token {json.loads(issued.stdout)['token']}"]
    base_ms = median_ms(
        ["curl", "-H", f"Host: {found['listed']}.localhost", f"http://127.0.0.1:{PORT}/timestamp"]
    )
    listing = f"http://127.0.0.1:{PORT}/api:1/service/{found['listed']}/content/item"
    cases = [
        (
            "device GET /provision/download",
            ["curl", *lister, f"http://127.0.0.1:{PORT}/provision/download"],
        ),
        ("API GET content/item", ["curl", *token, listing]),
        ("API GET content/item?full=true", ["curl", *token, f"{listing}?full=true"]),
    ]
    print(f"listing {args.items:,} items (median of 15; /timestamp {base_ms:.1f} ms):")
    for label, command in cases:
        ms = median_ms(command)
        print(f"  {label}: {ms:.1f} ms ({ms / base_ms:.1f}x /timestamp)")


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
