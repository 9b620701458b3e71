"""The ASGI application the server runs: Django on a fixed pool of threads, long polls parked
in the event loop.

Django's own ASGI handler runs each request's sync code in a new thread, so persistent
database connections are never reused; here Django runs as under a threaded WSGI server
(each pool thread keeps its connection), while the event loop owns the sockets. A long poll
that has to wait leaves its thread at once (see `provisioning.longpoll`), so thousands of
waiting polls cost no thread and no database connection.

Device API requests never reach Django's handler: the front routes them to the device API
(`provisioning.host.DeviceAPI`) and resolves the typed result its handlers return. The jobs
they hand back are stored by group commit (`Batcher`, `provisioning.store`), and the hottest
two, a token write and an activation, are checked in the event loop with no thread at all.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import os
import queue
import sys
import tempfile
import threading
from typing import Any

from provisioning import longpoll
from provisioning.answers import Answer, Pending, Stream, Wait

log = logging.getLogger(__name__)

# Bodies are spooled to a temporary file past 1 MiB. The largest accepted is the largest CSV
# import plus room for its multipart framing; the device API limits its own to 1 MiB.
SPOOL_IN_MEMORY = 1024 * 1024
MULTIPART_ROOM = 1024 * 1024


class Front:
    def __init__(self, wsgi_app, threads: int, initializer=None, device_api=None):
        from django.conf import settings

        self.app = wsgi_app
        # provisioning.host.DeviceAPI: device API requests never reach Django's handler.
        self.device_api = device_api
        self.initializer = initializer
        self.pool = Pool(threads, initializer)
        self.max_body = settings.IMPORT_MAX_BYTES + MULTIPART_ROOM
        self.body_timeout = settings.REQUEST_BODY_TIMEOUT
        self.batchers: dict[str, Batcher] = {}
        self.mqtt = None  # provisioning.mqtt.gateway.Gateway, when MQTT_PORT is set
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start_mqtt(self, port: int | None = None) -> None:
        """Listen for MQTT over TLS (SPEC.md section 8) in this loop when it is configured:
        MQTT_PORT and a server certificate (MQTT_TLS_CERT, MQTT_TLS_KEY)."""
        from django.conf import settings

        port = (settings.MQTT_PORT or None) if port is None else port  # 0 in settings: off
        if self.device_api is None or port is None:
            return
        from provisioning.mqtt.gateway import Gateway
        from provisioning.mqtt.tls import Credentials

        cert, key = settings.MQTT_TLS_CERT, settings.MQTT_TLS_KEY
        if not (os.path.exists(cert) and os.path.exists(key)):
            # Listening all the same: the certificate is read when it appears (tls_stack).
            log.warning("MQTT: no server certificate at %s yet (MQTT_TLS_CERT)", cert)
        self.mqtt = Gateway(self, Credentials(cert, key), settings.MQTT_BIND, port)
        await self.mqtt.start()

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1000})

    async def run_sync(self, function, *args):
        return await self.pool.run(function, *args)

    async def http(self, scope: dict, receive, send) -> None:
        answer = await self.respond(scope, receive, send)
        if answer is None:
            return  # already answered (or the client left)
        if isinstance(answer, Wait):
            answer = await self.wait(answer.poll, receive)
            if answer is None:
                return  # the client went away: nothing to answer
        if isinstance(answer, Stream):
            await self.stream(answer, receive, send)
            return
        if isinstance(answer, Answer):
            status, headers = answer.status, encode_headers(answer.header_list())
            chunks = [answer.content]
        else:
            status, headers, chunks = answer
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"".join(chunks)})

    async def stream(self, answer: Stream, receive, send) -> None:
        """A file sent a chunk at a time as the client takes it: `send` waits while the
        socket's buffer is full, so a slow device holds a chunk, not the file, and no
        thread. The download's event is written on a pool thread once it ends.

        Chunks are read here, in the loop: the content store is a local filesystem (S3 is
        never streamed), read sequentially with the kernel's readahead, so a 64 KiB read
        is a copy from the page cache. Reading on threads instead halved the rate and
        added 27 MB of RSS for 100 downloads (each thread's malloc arena keeps what it
        freed; scripts/bench_content.py)."""
        sent = 0
        gone = asyncio.ensure_future(receive())  # the body is read: next comes a disconnect
        try:
            headers = encode_headers(answer.header_list())
            await send({"type": "http.response.start", "status": answer.status, "headers": headers})
            chunks = answer.chunks()
            while True:
                chunk = next(chunks, None)
                if chunk is None:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                # Let the loop run between chunks, whether or not the socket was full: the
                # other connections get their turn, and a disconnect is seen.
                await asyncio.sleep(0)
                if gone.done():
                    return  # the client left: only what it got before is counted
                sent += len(chunk)
            await send({"type": "http.response.body", "body": b""})
        except OSError:
            log.warning("a download stopped after %d bytes", sent, exc_info=True)
        finally:
            gone.cancel()
            await self.run_sync(answer.finish, sent)

    async def wait(self, poll, receive) -> Answer | None:
        """Park a long poll in the loop (no thread) until its alias changes or time runs out."""
        if (refused := longpoll.refusal(poll)) is not None:
            status, reason = refused
            return Answer(status, reason, (("Retry-After", str(longpoll.RETRY_AFTER_S)),))
        found = await longpoll.park(poll, receive, self.run_sync)
        if found is False:
            return None
        if found is None:
            return Answer(304)
        body, headers = longpoll.answer(poll.alias, *found)
        kept = tuple((n, v) for n, v in headers if n not in ("Content-Type", "Content-Length"))
        return Answer(200, body, kept, content_type=dict(headers)["Content-Type"])

    async def respond(self, scope: dict, receive, send):
        """The answer: an `Answer` or a `Wait` from the device API, or Django's (status,
        headers, body chunks); None when it was sent already. The request (environ, body) is
        dropped on return: a parked poll keeps only what it needs, which keeps the garbage
        collector's work small."""
        limit = self.body_limit(scope)
        body = await read_body(scope, receive, limit, self.body_timeout)
        if body is None:
            return None  # gone before the request was complete
        if body == 408:
            slow = f"the body was not sent in time ({self.body_timeout:g} s without any of it)"
            await send_plain(send, 408, slow.encode(), [(b"connection", b"close")])
            return None
        if isinstance(body, int):
            size = f"{limit // 1024 // 1024} MiB" if limit >= 1024 * 1024 else f"{limit} bytes"
            await send_plain(send, body, f"the body is larger than {size}".encode())
            return None
        try:
            environ = build_environ(scope, body)
            if "CONTENT_LENGTH" not in environ:
                # A chunked body, read whole above: its length is now known. Without it,
                # WSGI readers (Django's included) read a chunked body as empty.
                environ["CONTENT_LENGTH"] = str(body.seek(0, 2))
                body.seek(0)
            routed = self.device_api.route(environ) if self.device_api is not None else None
            if routed is not None:
                return await self.device(*routed)
            loop = asyncio.get_running_loop()
            status, headers, chunks = await self.run_sync(run_wsgi, self.app, environ, send, loop)
        finally:
            body.close()
        if status is None:
            return None  # a streamed response, already sent from its thread
        return status, headers, chunks

    def body_limit(self, scope: dict) -> int:
        """The largest body this request may send, known from its headers before any of it
        is read: the device API's own limit on device hosts, the CSV import's only for the
        import endpoints with credentials, Django's form limit for the rest."""
        if self.device_api is None:
            return self.max_body
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        signed = b"authorization" in headers or b"sessionid=" in headers.get(b"cookie", b"")
        return min(self.max_body, self.device_api.body_limit(host, scope["path"], signed))

    async def device(self, request, connector_id: str) -> Answer | Wait:
        """A device API request: its no-query step in the loop when it has one, else its
        handler on a thread; a pending job is answered once the store committed it."""
        api = self.device_api
        try:
            result = api.in_loop(request, connector_id)
        except Exception:
            log.exception("the device API failed in the event loop; a thread answers instead")
            result = None
        if result is None:
            result = await self.run_sync(api.handle, request, connector_id)
        if not isinstance(result, Pending):
            return result
        return await self.resolve(result)

    async def resolve(self, pending: Pending) -> Answer:
        """A pending job's answer once the store committed it, or why it did not."""
        outcome = await self.store(pending.job)
        return self.answered(pending, outcome) or await self.explain(pending)

    def answered(self, pending: Pending, outcome) -> Answer | None:
        """The answer of a job the store executed; None when it was not stored and why is
        to be found out (`explain`)."""
        if outcome is self.device_api.stored:
            return pending.answer
        if isinstance(outcome, Answer):
            return outcome
        return None

    async def explain(self, pending: Pending) -> Answer:
        return await self.run_sync(self.device_api.explain, pending)

    def store(self, job) -> asyncio.Future:
        if (batcher := self.batchers.get(job.kind)) is None:
            batcher = Batcher(
                self.device_api.execute,
                job.max_batch,
                initializer=self.initializer,
                failed=self.device_api.unstored,
            )
            self.batchers[job.kind] = batcher
        return batcher.submit(job)

    async def lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Everything loaded so far (Django, the apps, their modules) lives as long as
                # the process: moved out of the collector's sight, a full collection no longer
                # walks it. Without this, one with 5,000 parked polls paused the loop for
                # 0.1-0.9 s (scripts/bench_long_poll.py).
                gc.collect()
                gc.freeze()
                gc.set_threshold(*GC_THRESHOLDS)
                self.loop = asyncio.get_running_loop()
                from connector import relay  # the outbox relay of this process (EVENTS_RELAY)

                relay.start_in_process(self.initializer)
                try:
                    await self.start_mqtt()
                except Exception as exc:
                    log.exception("the MQTT gateway did not start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                from connector import relay

                relay.stop_in_process()
                if self.mqtt is not None:
                    await self.mqtt.stop()
                longpoll.stop()
                self.pool.stop()
                for batcher in self.batchers.values():
                    batcher.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


# The collector's thresholds in a server process. Python's default (700, 10, 10) runs a
# young collection every 700 net allocations and a full one every hundred: under load the
# loop spent 17 % of its time collecting (MQTT PUBLISHes, scripts/bench_mqtt.py), walking
# the same live sessions and jobs again and again. Requests and PUBLISHes make little cyclic
# garbage; what they make waits a little longer.
GC_THRESHOLDS = (20_000, 20, 20)


class Pool:
    """Threads that run Django. Leaner than `run_in_executor` on the hot path: one C queue
    put to hand a call over, one `call_soon_threadsafe` to hand the result back (the executor
    adds a concurrent future, a semaphore and a chain of callbacks per call)."""

    def __init__(self, threads: int, initializer=None):
        self.calls: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self.work, args=(initializer,), name=f"django-{n}", daemon=True)
            for n in range(threads)
        ]
        for thread in self.threads:
            thread.start()

    def run(self, function, *args, loop: asyncio.AbstractEventLoop | None = None):
        """`function(*args)` on a thread; an asyncio future of the loop (the running one
        unless given) resolves to its result."""
        loop = loop or asyncio.get_running_loop()
        future = loop.create_future()
        self.calls.put((loop, future, function, args))
        return future

    def work(self, initializer) -> None:
        if initializer is not None:
            initializer()
        while (call := self.calls.get()) is not None:
            loop, future, function, args = call
            try:
                result, error = function(*args), None
            except BaseException as exc:  # handed to the awaiting coroutine
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:
                pass  # the loop is closed: nobody awaits this any more
        from django.db import connections

        connections.close_all()  # this thread's own connections

    def stop(self, timeout: float = 5.0) -> None:
        """Let the threads finish what they run and close their database connections."""
        for _ in self.threads:
            self.calls.put(None)
        for thread in self.threads:
            thread.join(timeout)


class Batcher:
    """Group commit: jobs submitted while a batch is being executed go together in the next
    one. The batches run one after another on a thread (and database connection) of the
    batcher's own, which takes the next batch itself the moment a commit is done: the loop
    only hands jobs over and gets results back, and a busy loop never delays the store. No
    timer: a job that finds the thread idle starts a batch at once, so batches grow only with
    the load.

    `execute(jobs)` returns one result per job. A batch carries several jobs of one `key`
    only of a kind with `shares_batch` (the writes: the store keeps the last one's values),
    in the order they came; others wait for the batch after, which starts once this one has
    committed, so two jobs never race on one row. A batch that raises gives every job
    `failed`."""

    def __init__(self, execute, limit: int, initializer=None, failed: object = False):
        self.execute = execute
        self.failed = failed  # every job's result when a batch raises
        self.limit = limit
        self.initializer = initializer
        self.pending: collections.deque = collections.deque()  # (job, future), under `lock`
        self.lock = threading.Lock()
        self.idle = True  # the thread waits for `wake`; under `lock`
        self.wake: queue.SimpleQueue = queue.SimpleQueue()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self.work, name="store", daemon=True)
        self.thread.start()

    def submit(self, job) -> asyncio.Future:
        # The loop, once: on Python 3.11 each asyncio.get_running_loop() is a getpid() call.
        loop = self.loop
        if loop is None or loop.is_closed():
            loop = self.loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self.lock:
            self.pending.append((job, future))
            if self.idle:
                self.idle = False
                self.wake.put(True)
        return future

    def _take(self) -> list:
        """The next batch: up to `limit` pending jobs in order, a key twice only where the
        kind shares batches. Called with `lock` held."""
        taken, later, keys = [], collections.deque(), set()
        pending = self.pending
        while pending and len(taken) < self.limit:
            job, future = pending.popleft()
            if job.key in keys and not getattr(job, "shares_batch", False):
                later.append((job, future))
            else:
                keys.add(job.key)
                taken.append((job, future))
        if later:
            later.extend(pending)
            self.pending = later
        return taken

    def work(self) -> None:
        if self.initializer is not None:
            self.initializer()
        while self.wake.get():
            while True:
                with self.lock:
                    taken = self._take()
                    if not taken:
                        self.idle = True
                        break
                try:
                    results = self.execute([job for job, _future in taken])
                except Exception:
                    log.exception("a batch of %d failed", len(taken))
                    results = [self.failed] * len(taken)
                try:
                    taken[0][1].get_loop().call_soon_threadsafe(_settle_all, taken, results)
                except RuntimeError:
                    pass  # the loop is closed: nobody awaits these any more
        from django.db import connections

        connections.close_all()  # this thread's own connections

    def stop(self, timeout: float = 5.0) -> None:
        """Let the thread finish the batch it runs and close its database connection."""
        self.wake.put(False)
        self.thread.join(timeout)


def _settle_all(taken: list, results: list) -> None:
    for (_job, future), result in zip(taken, results, strict=True):
        if not future.done():
            future.set_result(result)


def _settle(future: asyncio.Future, result, error) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


async def read_body(scope: dict, receive, max_body: int, idle: float | None = None) -> Any:
    """The request body as a file; None when the client left, 413 when too large, 408 when
    more than `idle` seconds pass without a part of it (a slow client holds no more)."""
    declared = dict(scope["headers"]).get(b"content-length", b"0")
    if declared.isdigit() and int(declared) > max_body:
        return 413
    body = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    size = 0
    while True:
        try:
            async with asyncio.timeout(idle):
                message = await receive()
        except TimeoutError:
            body.close()
            return 408
        if message["type"] == "http.disconnect":
            body.close()
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body:
            body.close()
            return 413
        body.write(chunk)
        if not message.get("more_body", False):
            break
    body.seek(0)
    return body


def build_environ(scope: dict, body) -> dict:
    """A PEP 3333 environ for the request. Header names with underscores are dropped, as
    gunicorn does: `X_SSL_CLIENT_CERT` must not pass for the proxy's `X-SSL-Client-Cert`."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode().decode("latin-1"),
        "PATH_INFO": scope["path"].encode().decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "REMOTE_ADDR": client[0],
        "REMOTE_PORT": str(client[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": body,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1")
        if "_" in name:
            continue
        value = raw_value.decode("latin-1")
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def encode_headers(headers) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def run_wsgi(app, environ: dict, send, loop) -> tuple[int | None, list, list[bytes]]:
    """Run Django in this pool thread. An ordinary response comes back whole (one hop back to
    the loop); a streamed one (files, downloads) is sent from here, chunk by chunk."""
    started: list = []

    def start_response(status: str, headers, exc_info=None):
        started[:] = [int(status.split(" ", 1)[0]), encode_headers(headers)]
        return lambda data: None  # the write() callable; Django never uses it

    result = app(environ, start_response)
    try:
        if not getattr(result, "streaming", False):
            return started[0], started[1], list(result)

        def push(message: dict) -> None:
            asyncio.run_coroutine_threadsafe(send(message), loop).result()

        push({"type": "http.response.start", "status": started[0], "headers": started[1]})
        for chunk in result:
            if chunk:
                push({"type": "http.response.body", "body": chunk, "more_body": True})
        push({"type": "http.response.body", "body": b""})
        return None, [], []
    finally:
        if hasattr(result, "close"):
            result.close()


async def send_plain(send, status: int, body: bytes, extra: list | None = None) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
