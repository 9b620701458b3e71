#!/usr/bin/env python3
"""Probe the production server as an attacker and as a careless client would (issue #14).

Runs `gunicorn iotconnector.asgi -c deploy/gunicorn.conf.py` with the shipped limits (its
workers held to 1,024 open files, as the issue's server was) on SQLite, then PostgreSQL, and
reports:

- 5xx answers to a corpus of bad input (every class the issue lists, on every endpoint) and
  to randomly mutated device requests (goal 0);
- tracebacks in the server log (goal 0);
- the success rate of honest clients on the same address as a guesser: a token device, a
  password device and an administrator signing in (goal 100 %);
- slowloris: 1,200 connections trickling header bytes (more than a worker has descriptors)
  while an honest client keeps asking; the share of its requests answered (goal 100 %);
- the CPU seconds of the largest record body the server accepts.

    .venv/bin/python scripts/probe_hardening.py [--only sqlite|postgresql] [--seconds 10]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import resource
import socket
import sys
import threading
import time
from pathlib import Path

import requests
from benchlib import backend_options, cpu_seconds, each_backend, processes, seed, start

DEVICE_PASSWORD = "a-device-password-of-32-bytes!!!"  # noqa: S105 (a probe's own)
DEEP = "[" * 100_000 + "]" * 100_000
SURROGATE = '"\\ud800"'
NUL = '"a\\u0000b"'
HUGE = "9" * 5000
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


SEED = """
call_command("collectstatic", interactive=False, verbosity=0)  # as scripts/serve does
from connector.models import AuthType
from devices import services as device_services
admin = user
other = create_connector(user, "password line")
other.auth_type = AuthType.PASSWORD
other.resources = connector.resources
other.save()
for identity in ("honest-1", "victim-1", "spare-1"):
    device_services.whitelist_device(connector, identity)
    device_services.whitelist_device(other, identity)
token = activate_device(connector, "honest-1", None, "127.0.0.1", secure=True).content.decode()
for identity in ("honest-1", "victim-1"):
    activate_device(other, identity, DEVICE_PASSWORD, "127.0.0.1", secure=True)
from connector.models import User
User.objects.create_user("victim@example.com", "another long passphrase")
print(json.dumps({"token": token, "cid": connector.pk, "pid": other.pk}))
"""


class Probe:
    def __init__(self, base: str, info: dict):
        self.base = base
        self.info = info
        self.token_host = f"{info['cid']}.localhost"
        self.password_host = f"{info['pid']}.localhost"
        self.statuses: dict[int, int] = {}

    def send(self, method: str, path: str, host: str = "localhost", **kwargs) -> int:
        headers = {"Host": host, **kwargs.pop("headers", {})}
        try:
            response = requests.request(
                method, self.base + path, headers=headers, timeout=30, **kwargs
            )
            status = response.status_code
        except requests.RequestException:
            status = 0  # the connection closed without an answer
        self.statuses[status] = self.statuses.get(status, 0) + 1
        return status

    # --- bad input ---------------------------------------------------------------------------

    def corpus(self) -> None:
        admin = {"Authorization": basic("bench@example.com", "bench password 1234")}
        json_type = {"Content-Type": "application/json"}
        cid = self.info["cid"]
        service = f"/api:1/service/{cid}/device2"
        bodies = [
            DEEP,
            '{"a": ' * 5000 + "1" + "}" * 5000,
            '{"name": ' + SURROGATE + "}",
            '{"name": ' + NUL + "}",
            '{"na\\ud800me": "x"}',
            "null",
            "[]",
            "1e400",
            HUGE,
            '{"email": ' + SURROGATE + ', "password": "x"}',
            '{"auth": {"expire": 99999999999999999999}}',
            '{"resources": {"t": {"unit": ' + SURROGATE + "}}}",
            '{"resources": {"t": {"format": "number", "allowed": [1e400]}}}',
            '{"resources": {"t": {"initial": ' + NUL + "}}}",
            b"\xff\xfe\x00garbage",
        ]
        for body in bodies:
            data = body if isinstance(body, bytes) else body.encode()
            self.send("POST", "/api:1/token/", headers=json_type, data=data)
            self.send("POST", "/api:1/connector/", headers={**admin, **json_type}, data=data)
            self.send("PATCH", service, headers={**admin, **json_type}, data=data)
            self.send("PUT", f"{service}/identity/x-1", headers={**admin, **json_type}, data=data)
            self.send(
                "PATCH",
                f"{service}/identity/honest-1/state",
                headers={**admin, **json_type},
                data=data,
            )
        for query in [
            "limit=²",
            f"limit={HUGE}",
            f"before={HUGE}",
            "identity=a%00b",
            "tag=%00",
            "status=%ff",
            "limit=-1",
            "after=\ud800",
        ]:
            self.send("GET", f"{service}/identity/?{query}", headers=admin)
            self.send("GET", f"/api:1/service/{cid}/logs?{query}", headers=admin)
        for path in [f"{service}/identity/a%00b", "/c/%00/", "/login/?next=%00"]:
            self.send("GET", path, headers=admin)
        for host in ["bad host", "x" * 300, "evil.example", "%00", "localhost:99999"]:
            self.send("GET", "/login/", host=host)
        for auth in [basic("a\x00b", "x"), "Basic %%%", "Basic " + "A" * 10000, "token \x00"]:
            self.send("GET", "/api:1/connector/", headers={"Authorization": auth})
            self.send(
                "POST",
                "/onep:v1/stack/alias",
                host=self.password_host,
                headers={"Authorization": auth},
                data="temp=1",
            )
        token = {"X-Exosite-CIK": self.info["token"]}
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        device_cases = [
            ("POST", "/provision/activate", {}, "id=a&id=b"),
            ("POST", "/provision/activate", {}, "id=" + "x" * 100_000),
            ("POST", "/provision/activate", {}, "id=\x00"),
            ("POST", "/onep:v1/stack/alias", token, "temp=" + "1" * 100_000),
            ("POST", "/onep:v1/stack/alias", token, "%ff%fe=%00"),
            ("POST", "/onep:v1/stack/alias", {**token, "Request-Timeout": HUGE}, "temp=1"),
            ("GET", "/onep:v1/stack/alias?temp", {**token, "Request-Timeout": HUGE}, None),
            ("GET", "/onep:v1/stack/alias?" + "a&" * 10000, token, None),
            ("POST", "/onep:v1/stack/record", token, f"alias=temp&{HUGE}=1"),
            (
                "POST",
                "/onep:v1/stack/record",
                token,
                "alias=temp&" + "&".join(f"{n}=1" for n in range(20000)),
            ),
            ("POST", "/onep:v1/stack/alias", token, b"\xff" * 2_000_000),
        ]
        for method, path, headers, body in device_cases:
            self.send(method, path, host=self.token_host, headers={**form, **headers}, data=body)

        # Chunked bodies are read (not taken as empty).
        def chunks():
            yield b"temp="
            yield b"21"

        self.send(
            "POST",
            "/onep:v1/stack/alias",
            host=self.token_host,
            headers={**form, **token},
            data=chunks(),
        )

    def mutations(self, count: int) -> None:
        """Random device requests: paths, headers and bodies drawn from pieces that matter."""
        rng = random.Random(14)
        paths = [
            "/provision/activate",
            "/onep:v1/stack/alias",
            "/onep:v1/stack/record",
            "/timestamp",
            "/provision/download",
            "/onep:v1/stack/alias?temp",
            "/%00",
            "/x" * 50,
        ]
        pieces = [
            "temp",
            "=",
            "&",
            "%",
            "%00",
            "%ff",
            "\ud800".encode("utf-8", "surrogatepass").decode("latin-1"),
            "id",
            "alias",
            "1",
            HUGE[:40],
            "[",
            "{",
            "\x00",
            "é",
            "²",
            "-1",
            "1e400",
            " ",
        ]
        headers_pool = [
            ("X-Exosite-CIK", lambda: self.info["token"]),
            ("X-Exosite-CIK", lambda: "".join(rng.choices("aZ9%\x00", k=rng.randint(0, 80)))),
            (
                "Authorization",
                lambda: basic(rng.choice(["victim-1", "nobody", "\x00"]), rng.choice(pieces)),
            ),
            ("Request-Timeout", lambda: rng.choice(["-1", "0", HUGE[:30], "²", "1e9", "abc"])),
            ("If-Modified-Since", lambda: rng.choice(["0", HUGE[:30], "yesterday", "²"])),
            (
                "Content-Type",
                lambda: rng.choice(
                    ["application/x-www-form-urlencoded", "text/plain", "a/b; charset=\x7f"]
                ),
            ),
        ]
        for _ in range(count):
            headers = {}
            for name, value in rng.sample(headers_pool, rng.randint(0, 4)):
                try:
                    headers[name] = value().encode("latin-1", "ignore").decode("latin-1")
                except UnicodeError:
                    continue
            headers = {k: v.replace("\r", "").replace("\n", "") for k, v in headers.items()}
            body = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
            host = rng.choice([self.token_host, self.password_host])
            method = rng.choice(["GET", "POST", "POST", "PUT"])
            self.send(
                method,
                rng.choice(paths),
                host=host,
                headers=headers,
                data=body.encode("utf-8", "surrogatepass"),
            )

    # --- throttling --------------------------------------------------------------------------

    def beside_a_guesser(self, seconds: float) -> dict:
        """Guessers on the probe's own address while honest clients (the same address) work."""
        stop = time.monotonic() + seconds
        results = {"token device": [0, 0], "password device": [0, 0], "administrator": [0, 0]}
        answers: dict[str, dict] = {kind: {} for kind in results}
        guesses: dict[int, int] = {}

        def guesser():
            rng = random.Random(1)
            session = requests.Session()
            while time.monotonic() < stop:
                kind = rng.randrange(4)
                try:
                    if kind == 0:
                        r = session.post(
                            self.base + "/onep:v1/stack/alias",
                            data="temp=1",
                            timeout=10,
                            headers={
                                "Host": self.token_host,
                                **FORM,
                                "X-Exosite-CIK": f"{rng.randrange(10**12):040d}",
                            },
                        )
                    elif kind == 1:
                        r = session.post(
                            self.base + "/onep:v1/stack/alias",
                            data="temp=1",
                            timeout=10,
                            headers={
                                "Host": self.password_host,
                                **FORM,
                                "Authorization": basic("victim-1", f"guess {rng.random()}"),
                            },
                        )
                    elif kind == 2:
                        r = session.post(
                            self.base + "/provision/activate",
                            data=f"id=guess-{rng.random()}",
                            headers={"Host": self.token_host, **FORM},
                            timeout=10,
                        )
                    else:
                        r = session.get(
                            self.base + "/api:1/connector/",
                            timeout=10,
                            headers={
                                "Authorization": basic("victim@example.com", f"g{rng.random()}")
                            },
                        )
                    guesses[r.status_code] = guesses.get(r.status_code, 0) + 1
                except requests.RequestException:
                    guesses[0] = guesses.get(0, 0) + 1

        def honest(kind: str, call):
            session = requests.Session()
            while time.monotonic() < stop:
                try:
                    response = call(session)
                    ok = response.status_code in (200, 204)
                    if not ok:
                        answers[kind][response.status_code] = response.text[:80]
                except requests.RequestException:
                    ok = False
                    answers[kind][0] = "no answer"
                results[kind][0] += ok
                results[kind][1] += 1
                time.sleep(0.02)

        calls = {
            "token device": lambda s: s.post(
                self.base + "/onep:v1/stack/alias",
                data="temp=1",
                timeout=10,
                headers={**FORM, "Host": self.token_host, "X-Exosite-CIK": self.info["token"]},
            ),
            "password device": lambda s: s.post(
                self.base + "/onep:v1/stack/alias",
                data="temp=1",
                timeout=10,
                headers={
                    "Host": self.password_host,
                    **FORM,
                    "Authorization": basic("honest-1", DEVICE_PASSWORD),
                },
            ),
            "administrator": lambda s: s.get(
                self.base + "/api:1/connector/",
                timeout=10,
                headers={"Authorization": basic("bench@example.com", "bench password 1234")},
            ),
        }
        threads = [threading.Thread(target=guesser) for _ in range(2)]
        threads += [threading.Thread(target=honest, args=(k, c)) for k, c in calls.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return {"honest": results, "guesser": guesses, "refused honest": answers}

    # --- slow clients ------------------------------------------------------------------------

    def slowloris(self, port: int, connections: int, seconds: float) -> dict:
        stop = time.monotonic() + seconds
        opened = [0]
        answered, asked, worst = [0], [0], [0.0]

        def attacker(share: int):
            socks: list[socket.socket] = []
            while time.monotonic() < stop:
                while len(socks) < share and time.monotonic() < stop:
                    try:
                        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                        sock.setblocking(False)
                        sock.send(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
                        socks.append(sock)
                        opened[0] += 1
                    except OSError:
                        time.sleep(0.05)
                        break
                for sock in list(socks):  # a header byte now and then
                    try:
                        sock.send(b"X")
                        if sock.recv(1, socket.MSG_PEEK):  # answered (408/503): it was closed
                            raise OSError
                    except BlockingIOError:
                        continue
                    except OSError:
                        sock.close()
                        socks.remove(sock)
                time.sleep(1)
            for sock in socks:
                sock.close()

        def honest():
            while time.monotonic() < stop:
                started = time.monotonic()
                try:
                    ok = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).ok
                except requests.RequestException:
                    ok = False
                worst[0] = max(worst[0], time.monotonic() - started)
                answered[0] += ok
                asked[0] += 1
                time.sleep(0.05)

        attackers = [threading.Thread(target=attacker, args=(connections // 8,)) for _ in range(8)]
        for thread in attackers:
            thread.start()
        time.sleep(2)  # the connections are open before the honest client starts
        client = threading.Thread(target=honest)
        client.start()
        for thread in [*attackers, client]:
            thread.join()
        return {
            "answered": answered[0],
            "asked": asked[0],
            "slowest_s": round(worst[0], 2),
            "attack_connections": opened[0],
        }

    # --- the largest record ------------------------------------------------------------------

    def largest_record(self, server_pid: int) -> dict:
        """The most points a record may carry (`wire.MAX_RECORD_POINTS`), with short numbers
        and with text values filling the 1 MiB body limit: CPU seconds per request."""
        from provisioning.wire import MAX_BODY, MAX_RECORD_POINTS

        now = int(time.time())
        found = {}
        for alias, width in (("temp", 0), ("note", 0)):
            if alias == "note":  # the widest value that keeps the body within 1 MiB
                width = (MAX_BODY - 20) // MAX_RECORD_POINTS - len(f"&{now}=")
            workers = processes(parent=server_pid)
            before = cpu_seconds(workers)
            statuses, size = [], 0
            for round_no in range(5):
                start_ts = now - (round_no + 1) * MAX_RECORD_POINTS
                values = (
                    str(n).rjust(width, "v") if width else str(n) for n in range(MAX_RECORD_POINTS)
                )
                body = f"alias={alias}&" + "&".join(
                    f"{start_ts + n}={v}" for n, v in enumerate(values)
                )
                size = len(body)
                statuses.append(
                    self.send(
                        "POST",
                        "/onep:v1/stack/record",
                        host=self.token_host,
                        headers={**FORM, "X-Exosite-CIK": self.info["token"]},
                        data=body,
                    )
                )
            spent = cpu_seconds(workers) - before
            found[alias] = {
                "points": MAX_RECORD_POINTS,
                "bytes": size,
                "statuses": sorted(set(statuses)),
                "cpu_s_per_request": round(spent / 5, 3),
            }
        return found


def run(name: str, database_url: str, data_dir: str, args) -> dict:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DATA_DIR": data_dir,
        "DEVICE_API_INSECURE": "true",
        "DJANGO_SETTINGS_MODULE": "iotconnector.settings",
        "ALLOWED_HOSTS": "localhost,.localhost,127.0.0.1",
        "DEVICE_PASSWORD": DEVICE_PASSWORD,
    }
    info = seed(
        env,
        {"temp": {"format": "number"}, "note": {"format": "string"}},
        f"DEVICE_PASSWORD = {DEVICE_PASSWORD!r}\n" + SEED,
    )
    log = str(Path(data_dir) / f"{name}-server.log")

    def held_to_1024_files():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    server = start(env, "iotconnector.asgi", args.port, log=log, preexec_fn=held_to_1024_files)
    base = f"http://127.0.0.1:{args.port}"
    for _ in range(200):
        try:
            if requests.get(base + "/healthz", timeout=2).ok:
                break
        except requests.RequestException:
            time.sleep(0.1)
    probe = Probe(base, info)
    try:
        probe.corpus()
        corpus = dict(probe.statuses)
        probe.statuses.clear()
        probe.mutations(args.mutations)
        mutated = dict(probe.statuses)
        guessing = probe.beside_a_guesser(args.seconds)
        slow = probe.slowloris(args.port, 1200, args.seconds * 2)
        record = probe.largest_record(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    text = Path(log).read_text(errors="replace")
    first = text[text.find("Traceback") :][:20000] if "Traceback" in text else ""
    report = {
        "5xx (corpus)": sum(n for s, n in corpus.items() if s >= 500),
        "5xx (mutations)": sum(n for s, n in mutated.items() if s >= 500),
        "corpus answers": dict(sorted(corpus.items())),
        "mutation answers": dict(sorted(mutated.items())),
        "tracebacks in server log": text.count("Traceback"),
        "first traceback": [line for line in first.splitlines() if not line.startswith(" ")][:6]
        if first
        else None,
        "honest beside a guesser": {
            k: f"{ok}/{total} ({ok / max(total, 1):.1%})"
            for k, (ok, total) in guessing["honest"].items()
        },
        "guesser answers": dict(sorted(guessing["guesser"].items())),
        "honest refusals": guessing["refused honest"],
        "slowloris": {**slow, "answered_rate": f"{slow['answered'] / max(slow['asked'], 1):.1%}"},
        "largest record": record,
    }
    print(f"{name}: " + json.dumps(report, indent=2, ensure_ascii=False))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--mutations", type=int, default=3000)
    backend_options(parser, port=8775)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the probe's own 1,200 sockets
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iotconnector.settings")
    failed = False
    reports = each_backend(args, "probe_hardening", run)
    for name, report in reports.items():
        missed = [
            goal
            for goal, met in (
                ("no 5xx", not (report["5xx (corpus)"] or report["5xx (mutations)"])),
                ("no traceback", not report["tracebacks in server log"]),
                (
                    "every honest request",
                    all(not refused for refused in report["honest refusals"].values()),
                ),
                (
                    "every request during slowloris",
                    report["slowloris"]["answered"] == report["slowloris"]["asked"],
                ),
            )
            if not met
        ]
        if missed:
            print(f"{name}: missed: {', '.join(missed)}")
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
