"""The MQTT Device API (SPEC.md section 8): MQTT 3.1.1 over TLS, held in the server's event
loop like a parked long poll, so an idle session costs no thread and no database connection.

A connection goes: SNI read from the ClientHello (the connector), the TLS handshake
(`provisioning.mqtt.tls`, the client certificate judged by the application), CONNECT
authenticated on a thread by the HTTP API's own functions (`provisioning.mqtt.device`), then
packets in order. A PUBLISH is a device write or record: the same service function makes the
job, the front's group commit stores it, and PUBACK goes out only after the commit. Cloud
`set` values come down through the long polls' wake-ups (`provisioning.longpoll.hub`),
which reach every server process on both databases.

It is a device API gateway, not a broker: a session only ever receives its own device's set
values and answers to its own provisioning.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import secrets
import time

from django.conf import settings

from connector.models import MQTT_PROTOCOL, now_us
from provisioning import connectors, longpoll, rules, services, wire
from provisioning.answers import Answer, Pending
from provisioning.host import device_host_connector
from provisioning.jobs import STORED, Opened
from provisioning.mqtt import codec, device, tls

log = logging.getLogger(__name__)

WAIT_HELLO, WAIT_CONNECT, AUTHENTICATING, OPEN, CLOSED = range(5)
KEEPALIVE_GRACE = 1.5  # a client silent for 1.5 × its keepalive is gone (3.1.1 §3.1.2.10)
MAX_QUEUED = 32  # packets read ahead of the one in progress; reading pauses beyond
MAX_WRITE_BUFFER = 4 * 1024 * 1024  # a client that does not read its downlink is closed
# Answers after which the session cannot go on: the device is gone, locked or refused.
ENDS_SESSION = {401, 403, 404}
MAX_IN_FLIGHT = 64  # a session's PUBLISHes in the store at once (pipelined by the device)
SERVER_FAILED = Answer(500)


class Gateway:
    """The MQTT listener of one server process and its sessions."""

    def __init__(self, front, credentials: tls.Credentials, bind: str, port: int):
        self.front = front
        self.credentials = credentials
        self.bind, self.port = bind, port
        self.node = device.node_name()
        self.sessions: set[Session] = set()
        self.by_device: dict[int, set[Session]] = {}
        self.per_ip: collections.Counter[str] = collections.Counter()
        self.server: asyncio.base_events.Server | None = None
        self.tasks: set[asyncio.Task] = set()  # sessions' work in flight
        self.beat: asyncio.Future | None = None
        self.stopping = False

    # --- Life --------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await longpoll.start()
        longpoll.hub.observers.append(self.woken)
        self.server = await loop.create_server(
            lambda: Session(self),
            self.bind,
            self.port,
            reuse_port=True,  # every worker process listens; the kernel spreads connections
            backlog=settings.MQTT_BACKLOG,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        await self.run_sync(device.beat, self.node)
        self.beat = asyncio.ensure_future(self._beat())
        log.info("MQTT over TLS on %s:%d", self.bind, self.port)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, end every session cleanly (devices reconnect elsewhere), and
        record their disconnects."""
        self.stopping = True
        if self.beat is not None:
            self.beat.cancel()
        if self.server is not None:
            self.server.close()
        for session in list(self.sessions):
            session.close("the server is stopping")
        if self.woken in longpoll.hub.observers:
            longpoll.hub.observers.remove(self.woken)
        pending = [t for t in self.tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        if self.server is not None:
            await self.server.wait_closed()
        try:
            await self.run_sync(device.end_node, self.node)
        except Exception:
            log.exception("MQTT: could not mark this process's sessions disconnected")

    async def _beat(self) -> None:
        while not self.stopping:
            await asyncio.sleep(device.NODE_SEEN_EVERY_S)
            try:
                await self.run_sync(device.beat, self.node)
            except Exception:
                log.exception("MQTT: heartbeat failed")

    # --- Helpers for sessions -------------------------------------------------------------

    def run_sync(self, function, *args):
        return self.front.run_sync(function, *args)

    def spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def resolve(self, pending: Pending) -> Answer:
        return await self.front.resolve(pending)

    def woken(self, key: tuple[int, str]) -> None:
        """A wake-up of the long polls: a device's alias changed, or a newer session opened,
        or (device 0) a connector's sessions are to be checked again."""
        if key[0] == 0:
            if key[1].startswith(longpoll.CONNECTOR_KEY):
                self.spawn(self.recheck(key[1][len(longpoll.CONNECTOR_KEY) :]))
            return
        sessions = self.by_device.get(key[0])
        if sessions:
            for session in list(sessions):
                session.woken(key[1])

    async def recheck(self, connector_id: str) -> None:
        """The connector's settings changed or some of its devices were locked, deleted or
        revoked: its sessions whose device may no longer be connected end now (not at their
        next PUBLISH), all of them when the connector no longer takes MQTT."""
        held = [s for s in self.sessions if s.connector_id == connector_id and s.state == OPEN]
        devices = {s.device.id: s.device for s in held if s.device is not None}
        allowed = await self.run_sync(device.still_allowed, connector_id, list(devices.values()))
        for session in held:
            if session.device is None and not connectors_take_mqtt(connector_id):
                session.close("the connector no longer takes MQTT")
            elif session.device is not None and session.device.id not in allowed:
                session.close("the device or its connector changed: it may not stay connected")

    def attach(self, session: Session) -> None:
        """The session among its device's: woken by its set values from now on."""
        self.by_device.setdefault(session.device.id, set()).add(session)

    def take_over(self, session: Session) -> None:
        """The session's open is stored: the device's older sessions here are closed."""
        for other in list(self.by_device.get(session.device.id, ())):
            if other is not session:
                other.close("a newer connection of the device")

    def detach(self, session: Session) -> None:
        self.sessions.discard(session)
        self.per_ip[session.ip] -= 1
        if self.per_ip[session.ip] <= 0:
            del self.per_ip[session.ip]
        if session.device is not None:
            sessions = self.by_device.get(session.device.id)
            if sessions is not None:
                sessions.discard(session)
                if not sessions:
                    del self.by_device[session.device.id]


class InFlight:
    """A PUBLISH handed to the store, and the store's answer once it came."""

    __slots__ = ("publish", "pending", "answer")

    def __init__(self, publish: codec.Publish, pending: Pending):
        self.publish, self.pending = publish, pending
        self.answer: Answer | None = None


def connectors_take_mqtt(connector_id: str) -> bool:
    entry = connectors.cached(connector_id)
    return entry is not None and entry.connector.protocol_name == MQTT_PROTOCOL


class Session(asyncio.Protocol):
    """One MQTT connection."""

    __slots__ = (
        "gateway",
        "transport",
        "ip",
        "state",
        "hello",
        "tls",
        "reader",
        "connector_id",
        "client_id",
        "connection",
        "device",
        "anonymous",
        "keepalive",
        "last_rx",
        "timer",
        "queue",
        "busy",
        "paused",
        "qos1",
        "sent",
        "since",
        "writing",
        "in_flight",
        "after",
        "dirty",
        "downlink_busy",
        "next_id",
        "tokens",
        "publish_rate",
        "refilled",
        "reason",
        "opened",
    )

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.transport = None
        self.state = WAIT_HELLO
        self.hello = bytearray()
        self.tls: tls.TLSServerConnection | None = None
        self.reader = codec.Reader()
        self.connector_id = ""
        self.client_id = ""
        self.connection = secrets.token_hex(8)
        self.device = None
        self.anonymous = False
        self.keepalive = 0.0
        self.last_rx = time.monotonic()
        self.timer = None
        self.queue: collections.deque = collections.deque()
        self.busy = False
        self.paused = False
        self.qos1 = False
        self.sent: dict[str, int] = {}
        self.since = 0
        self.writing = False
        self.in_flight: collections.deque[InFlight] = collections.deque()
        self.after: tuple | None = None  # a packet waiting for those in flight
        self.dirty: set[str] = set()
        self.downlink_busy = False
        self.next_id = 0
        # Read by every PUBLISH: (tokens per second, burst), as the settings were at connect.
        self.publish_rate = (settings.MQTT_PUBLISH_RATE, settings.MQTT_PUBLISH_BURST)
        self.tokens = float(self.publish_rate[1])
        self.refilled = time.monotonic()
        self.reason = ""
        self.opened = False  # the store opened the session: its end is to be stored

    # --- Transport -------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("0.0.0.0", 0)  # noqa: S104
        self.ip = peer[0]
        gateway = self.gateway
        if gateway.stopping or gateway.per_ip[self.ip] >= settings.MQTT_MAX_PER_IP:
            transport.abort()  # over this address's connections: refused at once
            self.state = CLOSED
            self.ip = ""
            return
        gateway.per_ip[self.ip] += 1
        gateway.sessions.add(self)
        transport.set_write_buffer_limits(high=MAX_WRITE_BUFFER)
        self._arm(settings.MQTT_CONNECT_TIMEOUT)

    def connection_lost(self, exc) -> None:
        self.state = CLOSED
        if self.timer is not None:
            self.timer.cancel()
        if not self.ip:
            return
        self.gateway.detach(self)
        if self.opened:
            self.reason = self.reason or ("the connection was lost" if exc else "the client left")
            self.end_session()

    def data_received(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        self.last_rx = time.monotonic()
        if self.tls is None:
            self._hello(data)
        else:
            self._tls_bytes(data)

    def _hello(self, data: bytes) -> None:
        self.hello += data
        name = tls.server_name(bytes(self.hello))
        if name is tls.NEED_MORE:
            if len(self.hello) > tls.MAX_HELLO + 1024:
                self.close("the TLS ClientHello is too large")
            return
        connector_id = device_host_connector(name) if isinstance(name, str) else None
        if not connector_id:
            self.close("no SNI naming a connector")  # the handshake fails
            return
        self.connector_id = connector_id
        entry = connectors.cached(connector_id)
        if entry is not None:
            self._start_tls(entry)
            return
        self.transport.pause_reading()
        self.gateway.spawn(self._load_then_tls(connector_id))

    async def _load_then_tls(self, connector_id: str) -> None:
        entry, _failures = await self.gateway.run_sync(connectors.load, connector_id, self.ip)
        if self.state == CLOSED:
            return
        self.transport.resume_reading()
        if entry is None:
            self.close("no such connector")
        else:
            self._start_tls(entry)

    def _start_tls(self, entry) -> None:
        if entry.connector.protocol_name != MQTT_PROTOCOL:
            self.close("the connector does not take MQTT")
            return
        try:
            context = self.gateway.credentials.context()
        except Exception:
            log.warning("MQTT: no usable server certificate (MQTT_TLS_CERT, MQTT_TLS_KEY)")
            self.close("no server certificate")
            return
        self.tls = tls.TLSServerConnection(context)
        self.state = WAIT_CONNECT
        hello, self.hello = bytes(self.hello), bytearray()
        self._tls_bytes(hello)

    def _tls_bytes(self, data: bytes) -> None:
        try:
            received = self.tls.receive(data)
        except tls.TLSError as exc:
            self.close(str(exc), notify=False)
            return
        if received.outgoing:
            self.transport.write(received.outgoing)
        if received.data:
            try:
                packets = self.reader.feed(received.data)
            except codec.ProtocolError as exc:
                self.refuse(str(exc))
                return
            for packet in packets:
                self.packet(packet)
                if self.state == CLOSED:
                    return
        if received.closed:
            self.close("the client closed TLS")

    def send(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        try:
            self.transport.write(self.tls.send(data))
        except tls.TLSError as exc:
            self.close(str(exc), notify=False)
            return
        if self.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.close("the client does not read what it is sent")

    def close(self, reason: str, *, notify: bool = True) -> None:
        if self.state == CLOSED or self.transport is None:
            return
        self.reason = self.reason or reason
        if notify and self.tls is not None:
            try:
                self.transport.write(self.tls.close())
            except Exception:  # noqa: S110 (closing anyway)
                pass
        self.state = CLOSED
        self.transport.close()

    def refuse(self, reason: str) -> None:
        """A packet the gateway does not take: logged with its reason, connection closed."""
        identity = self.device.identity if self.device is not None else ""
        self.gateway.spawn(
            self.gateway.run_sync(
                device.log_refused_packet, self.connector_id, identity, self.ip, reason
            )
        )
        self.close(reason)

    # --- Timers ------------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(seconds, self._expired, seconds)

    def _expired(self, seconds: float) -> None:
        if self.state == CLOSED:
            return
        if self.state in (WAIT_HELLO, WAIT_CONNECT):
            self.close("no CONNECT in time")
            return
        if not self.keepalive:
            return
        idle = time.monotonic() - self.last_rx
        limit = self.keepalive * KEEPALIVE_GRACE
        if idle >= limit:
            self.close(f"silent past its keepalive ({self.keepalive:g} s × 1.5)")
        else:
            self._arm(limit - idle)

    # --- Packets ---------------------------------------------------------------------------

    def packet(self, packet) -> None:
        if self.state == WAIT_CONNECT:
            if not isinstance(packet, codec.Connect):
                self.refuse(f"{type(packet).__name__.upper()} before CONNECT")
                return
            self.state = AUTHENTICATING
        elif isinstance(packet, codec.Connect):
            self.refuse("CONNECT twice")
            return
        self.queue.append(packet)
        if len(self.queue) > MAX_QUEUED and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        if not self.busy:
            self._next()

    def _wait_for_token(self) -> float:
        """The device's PUBLISH rate (MQTT_PUBLISH_RATE per second, bursts of
        MQTT_PUBLISH_BURST): seconds to wait before this PUBLISH is handled. Meanwhile the
        session handles nothing else (its queue fills and reading pauses), so a flooding
        device slows to the rate and loses nothing."""
        now = time.monotonic()
        rate, burst = self.publish_rate
        self.tokens = min(burst, self.tokens + (now - self.refilled) * rate)
        self.refilled = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / rate

    def _resume(self) -> None:
        if self.state != CLOSED and self.paused and len(self.queue) <= MAX_QUEUED // 4:
            self.paused = False
            self.transport.resume_reading()

    def _next(self) -> None:
        """Handle the queued packets in order. A PUBLISH whose job the loop can make goes to
        the store at once, while those before it are still being committed (`in_flight`,
        up to MAX_IN_FLIGHT: a device's pipelined PUBLISHes share a batch); PINGREQ is
        answered at once when nothing is in flight. Anything else, or a PUBLISH the rate
        holds back, waits until nothing is in flight and runs in a task (`_slowly`), which
        comes back here when done."""
        while self.queue and self.state != CLOSED and not self.busy:
            if len(self.in_flight) >= MAX_IN_FLIGHT:
                return  # `_flush` comes back
            packet = self.queue.popleft()
            if self.paused and len(self.queue) <= MAX_QUEUED // 4:
                self._resume()
            delay = 0.0
            if isinstance(packet, codec.Publish):
                delay = self._wait_for_token()
                if not delay and self._publish_in_loop(packet):
                    continue
            elif isinstance(packet, codec.PingReq) and self.state == OPEN and not self.in_flight:
                self.send(codec.encode_pingresp())
                continue
            self.busy = True
            self.after = (packet, delay)
            if not self.in_flight:
                self._run_after()

    def _run_after(self) -> None:
        packet, delay = self.after
        self.after = None
        self.gateway.spawn(self._slowly(packet, delay))

    async def _slowly(self, packet, delay: float) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)
            await self.handle(packet)
        except Exception:
            log.exception("MQTT: a packet failed")
            self.close("the server failed")
        finally:
            self.busy = False
            self._next()

    async def handle(self, packet) -> None:
        if isinstance(packet, codec.Connect):
            await self.on_connect(packet)
        elif self.state != OPEN:
            return
        elif isinstance(packet, codec.Publish):
            await self.on_publish(packet)
        elif isinstance(packet, codec.PingReq):
            self.send(codec.encode_pingresp())
        elif isinstance(packet, codec.Disconnect):
            self.close("the client disconnected")
        elif self.anonymous:
            self.refuse("an anonymous connection may only publish $provision/<identity>")
        elif isinstance(packet, codec.Subscribe):
            # Downlink goes to every session of the device whatever it subscribed to.
            self.send(codec.encode_suback(packet.packet_id, [1] * len(packet.filters)))
        elif isinstance(packet, codec.Unsubscribe):
            self.send(codec.encode_unsuback(packet.packet_id))
        # PUBACK of a downlink PUBLISH: nothing to do (clean sessions, no redelivery).

    async def on_connect(self, connect: codec.Connect) -> None:
        if connect.level != codec.PROTOCOL_LEVEL:
            self.send(codec.encode_connack(codec.REFUSED_PROTOCOL_VERSION))
            self.close(f"protocol level {connect.level}, not 4 (MQTT 3.1.1)")
            return
        self.client_id = connect.client_id
        # 0 (no keepalive) or more than the cap: the cap, so no silent session lives forever.
        cap = settings.MQTT_MAX_KEEPALIVE
        self.keepalive = float(min(connect.keepalive, cap) if connect.keepalive else cap)
        chain = self.tls.peer_chain_pem()
        gateway = self.gateway
        found = await gateway.run_sync(
            device.authorize,
            self.connector_id,
            self.ip,
            connect,
            chain,
            self.connection,
            gateway.node,
        )
        if self.state == CLOSED:
            return
        opened = None
        if found.job is not None:
            # Attached before the session is stored, so that a set value stored meanwhile
            # wakes it (`woken` while AUTHENTICATING) and is not missed; the device's older
            # sessions are closed only once it is.
            self.device = found.device
            gateway.attach(self)
            opened = await gateway.front.store(found.job)
            if not isinstance(opened, Opened):
                found.code = codec.REFUSED_UNAVAILABLE  # the batch failed: try again later
            elif self.state == CLOSED:  # the client left meanwhile
                self.reason = self.reason or "the client left"
                self.end_session()
                return
            else:
                self.opened = True
                gateway.take_over(self)  # not before: a failed open leaves the older one
        self.send(codec.encode_connack(found.code))
        if found.code != codec.ACCEPTED:
            self.close(f"CONNACK {found.code}")
            return
        self.state = OPEN
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.keepalive:
            self._arm(self.keepalive * KEEPALIVE_GRACE)
        if found.device is None:
            # Anonymous: it may only provision; silent for 1.5 × 4 × MQTT_CONNECT_TIMEOUT: gone.
            self.anonymous = True
            self.keepalive = min(self.keepalive, settings.MQTT_CONNECT_TIMEOUT * 4)
            self.timer.cancel()
            self._arm(self.keepalive * KEEPALIVE_GRACE)
            return
        self.since = opened.since
        self.deliver(opened.downlink)
        if self.dirty:
            self.check_downlink()

    def end_session(self) -> None:
        """The session's end, to the store: the device is disconnected unless a newer
        session took over, and its `disconnect` logged with the reason."""
        job = device.session_job(
            self.device,
            self.ip,
            self.connection,
            self.gateway.node,
            opening=False,
            reason=self.reason,
        )
        self.gateway.spawn(self._stored_end(job))

    async def _stored_end(self, job) -> None:
        if await self.gateway.front.store(job) is not STORED:
            log.warning("MQTT: the end of session %s was not stored", self.connection)

    # --- Uplink ------------------------------------------------------------------------------

    def _publish_in_loop(self, publish: codec.Publish) -> bool:
        """The common PUBLISH, `$resource/<alias>` with a value the cached definitions take,
        handed to the store from the loop with no task: True when it was. Anything else
        (refused, needs a query or a log line) is `on_publish`'s."""
        topic = publish.topic
        if self.anonymous or self.state != OPEN or not topic.startswith("$resource/"):
            return False
        alias = topic[len("$resource/") :]
        try:
            wire.check_alias(alias)
            value = wire.mqtt_value(alias, publish.payload)
        except wire.WireError:
            return False
        pending = self._write_in_loop([(alias, value)])
        if pending is None:
            return False
        if publish.qos == 1:
            self.qos1 = True
        entry = InFlight(publish, pending)
        self.in_flight.append(entry)
        stored = self.gateway.front.store(pending.job)
        stored.add_done_callback(functools.partial(self._written, entry))
        return True

    def _written(self, entry: InFlight, stored: asyncio.Future) -> None:
        entry.answer = self.gateway.front.answered(entry.pending, stored.result())
        if entry.answer is None:  # not stored: why is a thread's to find out
            self.gateway.spawn(self._explained(entry))
        elif entry is self.in_flight[0]:
            self._flush()

    async def _explained(self, entry: InFlight) -> None:
        try:
            entry.answer = await self.gateway.front.explain(entry.pending)
        except Exception:
            log.exception("MQTT: a packet failed")
            entry.answer = SERVER_FAILED
        self._flush()

    def _flush(self) -> None:
        """Acknowledge, in order, the PUBLISHes in flight whose commit is done (one TLS
        record for them all), then go on with the queue."""
        acks = []
        while self.in_flight and self.in_flight[0].answer is not None:
            entry = self.in_flight.popleft()
            if self.state == CLOSED:
                continue
            if entry.answer is SERVER_FAILED:
                self.close("the server failed")
                continue
            ack = self._published(entry.publish, entry.pending, entry.answer)
            if ack:
                acks.append(ack)
        if acks:
            self.send(b"".join(acks))
        if self.state == CLOSED:
            return
        if not self.in_flight:
            if self.dirty:
                self.check_downlink()
            if self.after is not None:
                self._run_after()
                return
        self._next()

    async def on_publish(self, publish: codec.Publish) -> None:
        topic = publish.topic
        if self.anonymous:
            await self.on_provision(publish)
            return
        if publish.qos == 1:
            self.qos1 = True
        if topic.startswith("$resource/"):
            alias = topic[len("$resource/") :]
            try:
                wire.check_alias(alias)
                value = wire.mqtt_value(alias, publish.payload)
            except wire.WireError as exc:
                await self.gateway.run_sync(
                    device.refuse, self.device, alias, publish.payload, self.ip, exc.reason
                )
                self.ack(publish)
                return
            pending = self._write_in_loop([(alias, value)])
            if pending is None:
                pending = await self.gateway.run_sync(
                    device.write, self.device, [(alias, value)], self.ip, self.connection
                )
        elif topic == "$resource.batch":
            try:
                points = wire.parse_batch(publish.payload, now_us())
            except wire.WireError as exc:
                await self.gateway.run_sync(
                    device.refuse, self.device, topic, publish.payload, self.ip, exc.reason
                )
                self.ack(publish)
                return
            pending = await self.gateway.run_sync(
                device.record, self.device, points, self.ip, self.connection
            )
        else:
            self.refuse(f"topic {topic[:80]!r} is not $resource/<alias> or $resource.batch")
            return
        answer = pending
        if isinstance(pending, Pending):
            self.writing = True
            try:
                answer = await self.gateway.resolve(pending)
            finally:
                self.writing = False
        if ack := self._published(publish, pending, answer):
            self.send(ack)
        if self.dirty:
            self.check_downlink()

    def _published(self, publish: codec.Publish, pending, answer: Answer) -> bytes:
        """After the store answered a PUBLISH: its PUBACK to send (b"" at QoS 0), or the
        session ends (b"")."""
        if isinstance(pending, Pending) and answer.status < 300:
            self._stored(pending.job)
        if self.state == CLOSED:
            return b""
        if answer.status in ENDS_SESSION:
            self.close(f"the device may not write: {answer.content[:100]!r}")
            return b""
        # Also for a refused value: 3.1.1 has no negative acknowledgement.
        return codec.encode_puback(publish.packet_id) if publish.qos == 1 else b""

    def _write_in_loop(self, pairs) -> Pending | None:
        """The write's job made in the loop when the connector's definitions are cached and
        accept the values (nothing to log); else None: a thread makes it (or logs why not)."""
        entry = connectors.cached(self.connector_id)
        if entry is None:
            return None
        if entry.resources_version != self.device.resources_version:
            self.device = self.device._replace(resources_version=entry.resources_version)
        return services.device_write_in_loop(
            entry,
            self.device,
            pairs,
            self.ip,
            secure=True,
            protocol=device.PROTOCOL,
            connection_id=self.connection,
        )

    def _stored(self, job) -> None:
        """After a commit: what the session knows of its device's row and values."""
        dev = self.device
        if rules.activity_due(dev.last_ip, dev.last_seen, self.ip, job.now):
            self.device = dev._replace(last_ip=self.ip, last_seen=job.now)
        for row in getattr(job, "rows", ()):
            if row.set is not None:  # a settable alias the device wrote: not news to it
                self.sent[row.alias] = max(self.sent.get(row.alias, 0), job.now)
        self.dirty.difference_update(self.sent)

    def ack(self, publish: codec.Publish) -> None:
        if publish.qos == 1:
            self.send(codec.encode_puback(publish.packet_id))

    async def on_provision(self, publish: codec.Publish) -> None:
        topic = publish.topic
        if not topic.startswith("$provision/") or topic == "$provision/":
            self.refuse("an anonymous connection may only publish $provision/<identity>")
            return
        identity = topic[len("$provision/") :]
        if self.client_id not in ("", identity):
            self.refuse("the client id is not the identity provisioned")
            return
        found = await self.gateway.run_sync(
            device.provision, self.connector_id, identity, publish.payload, self.ip
        )
        answer = await self.gateway.resolve(found) if isinstance(found, Pending) else found
        if answer.status >= 300:
            self.close(f"provisioning refused ({answer.status})")  # logged by its service
            return
        self.ack(publish)
        self.send(codec.encode_publish(topic, answer.content if answer.status == 200 else b""))

    # --- Downlink ----------------------------------------------------------------------------

    def woken(self, alias: str) -> None:
        if self.state not in (OPEN, AUTHENTICATING):
            return
        if alias.startswith(device.SESSION_KEY):
            if alias[len(device.SESSION_KEY) :] != self.connection:
                self.close("a newer connection of the device")
            return
        entry = connectors.cached(self.connector_id)
        definition = entry.resources.get(alias) if entry is not None else None
        if definition is None or not definition.get("settable"):
            return  # only set values go down
        self.dirty.add(alias)
        if self.state == OPEN and not self.writing and not self.in_flight:
            self.check_downlink()

    def check_downlink(self) -> None:
        if self.downlink_busy or not self.dirty or self.state != OPEN:
            return
        self.downlink_busy = True
        self.gateway.spawn(self._downlink())

    async def _downlink(self) -> None:
        try:
            while self.dirty and self.state == OPEN:
                aliases, self.dirty = self.dirty, set()
                since = min(self.sent.get(a, self.since) for a in aliases)
                rows = await self.gateway.run_sync(
                    device.read_set_values, self.device, since, aliases
                )
                self.deliver(rows)
        finally:
            self.downlink_busy = False

    def deliver(self, rows) -> None:
        """PUBLISH `$resource/<alias>/<timestamp µs>` for each set value newer than the last
        one this session has; QoS 1 once the device published at QoS 1."""
        for alias, value, timestamp in rows:
            if timestamp <= self.sent.get(alias, self.since):
                continue
            self.sent[alias] = timestamp
            topic = f"$resource/{alias}/{timestamp}"
            if self.qos1:
                self.next_id = self.next_id % 65535 + 1
                self.send(codec.encode_publish(topic, value.encode(), 1, self.next_id))
            else:
                self.send(codec.encode_publish(topic, value.encode()))
