"""PostgreSQL: the device API's most frequent request, a token write, in the event loop.

`POST /onep:v1/stack/alias` with a token and a valid body is one prepared statement
(provisioning.auth.token_write_statement). Served from Django's thread pool it costs a thread
hop each way, a Django request and a blocking psycopg round trip, more CPU than the statement
itself. Here the front runs the same statement on one of a few async connections and answers
`204` without leaving the loop.

Only the plain success is answered here. Everything else (no such token, a refusal, a value
its definition refuses, an undefined alias only, changed definitions, a connection error)
returns False before anything was written, and Django answers it by the ordinary path, with
the same rules, events and status codes.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from django.conf import settings
from django.http.request import split_domain_port, validate_host

from iotconnector.middleware import FORWARDED_HEADERS, client_address, is_trusted_proxy
from provisioning import services, wire
from provisioning.auth import is_refused, read_credentials
from provisioning.host import device_host_connector

log = logging.getLogger(__name__)

PATH = "/onep:v1/stack/alias"


class FastWrite:
    def __init__(self, connections: int = 4):
        self.size = connections
        self.idle: list = []
        self.open = 0
        self.available: asyncio.Condition | None = None
        self.answered = 0  # writes answered here (tests and operators)

    @staticmethod
    def applies(scope: dict) -> bool:
        return scope["method"] == "POST" and scope["path"] == PATH and not scope["query_string"]

    async def __call__(self, environ: dict, body: bytes) -> bool:
        """True when the write was stored and `204` is the answer."""
        meta = dict(environ)
        peer = meta.get("REMOTE_ADDR", "")
        if is_trusted_proxy(peer):
            meta["REMOTE_ADDR"] = client_address(meta, peer)
        else:
            for header in FORWARDED_HEADERS:
                meta.pop(header, None)
        if settings.USE_X_FORWARDED_HOST and "HTTP_X_FORWARDED_HOST" in meta:
            return False
        domain = split_domain_port(meta.get("HTTP_HOST", ""))[0]
        if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
            return False
        connector_id = device_host_connector(domain)
        token = read_credentials(SimpleNamespace(META=meta)).token
        if not connector_id or token is None or not body or len(body) > wire.MAX_BODY:
            return False
        if not wire.is_form(meta.get("CONTENT_TYPE", "")):
            return False
        try:
            pairs = wire.parse_write(body)
        except wire.WireError:
            return False
        header, value = settings.SECURE_PROXY_SSL_HEADER
        secure = meta["wsgi.url_scheme"] == "https" or meta.get(header) == value
        ip = meta.get("REMOTE_ADDR") or "0.0.0.0"  # noqa: S104 (unknown peer)
        prepared = services.token_write(connector_id, token, pairs, ip, secure)
        if prepared is None:
            return False
        sql, params, version, now = prepared
        conn = await self.acquire()
        if conn is None:
            return False
        broken = False
        try:
            cursor = await conn.execute(sql, params, prepare=True)
            device = services.token_written(connector_id, await cursor.fetchall(), version)
            if device is None or is_refused(device, secure):
                return False  # matched but not written: Django gives the refusal
            if (touch := services.touch_statement(device, ip, now)) is not None:
                await conn.execute(*touch, prepare=True)
        except Exception:
            log.exception("device write: async path failed; answered by the ordinary path")
            broken = True
            return False
        finally:
            await self.release(conn, broken=broken)
        self.answered += 1
        return True

    async def acquire(self):
        import psycopg

        from provisioning.longpoll import connection_params

        if self.available is None:
            self.available = asyncio.Condition()
        async with self.available:
            while not self.idle and self.open >= self.size:
                await self.available.wait()
            if self.idle:
                return self.idle.pop()
            self.open += 1
        try:
            return await psycopg.AsyncConnection.connect(**connection_params(), autocommit=True)
        except Exception:
            log.exception("device write: cannot connect; answered by the ordinary path")
            await self.release(None, broken=True)
            return None

    async def release(self, conn, broken: bool = False) -> None:
        async with self.available:
            if broken:
                self.open -= 1
                if conn is not None:
                    await conn.close()
            else:
                self.idle.append(conn)
            self.available.notify()

    async def close(self) -> None:
        while self.idle:
            await self.idle.pop().close()
