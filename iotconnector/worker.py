"""gunicorn worker: uvicorn's event loop and HTTP parser, serving `iotconnector.asgi`."""

import asyncio
import logging
import os
import sys

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from iotconnector import protocol

log = logging.getLogger(__name__)
# How often a worker checks that its gunicorn master is still its parent.
ORPHAN_CHECK_S = 1.0


class Worker(UvicornWorker):
    CONFIG_KWARGS = {
        "loop": "uvloop",
        # httptools, with a header timeout, a header size limit and a connection cap.
        "http": "iotconnector.protocol:GuardedHttpToolsProtocol",
        "lifespan": "on",
        # Forwarded headers are judged by the app itself against TRUSTED_PROXIES
        # (iotconnector.middleware); uvicorn must pass the real peer address through.
        "proxy_headers": False,
        "server_header": False,
    }

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        guard_connections()
        server = Server(config=self.config)
        self._install_sigquit_handler()
        watchers = [
            asyncio.create_task(release_polls_on_exit(server)),
            asyncio.create_task(exit_when_orphaned(server, self.ppid)),
        ]
        await server.serve(sockets=self.sockets)
        for watcher in watchers:
            watcher.cancel()
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


def guard_connections() -> None:
    """Set this worker's limits on slow and numerous connections (iotconnector.protocol)
    from the settings, after raising its descriptor limit as far as the system allows."""
    from django.conf import settings

    descriptors = protocol.raise_descriptor_limit()
    if settings.configured:
        timeout, size = settings.REQUEST_HEADER_TIMEOUT, settings.MAX_REQUEST_HEADER_BYTES
        configured = settings.MAX_CONNECTIONS
    else:  # the benchmark's bare app: the defaults
        timeout, size, configured = 10.0, 64 * 1024, 0
    cap = protocol.connection_cap(configured, descriptors)
    protocol.configure(header_timeout=timeout, max_header_bytes=size, max_connections=cap)
    log.info(
        "connections: at most %d open (of %d descriptors), headers within %g s",
        cap,
        descriptors,
        timeout,
    )


async def release_polls_on_exit(server: Server) -> None:
    """On a graceful stop (SIGTERM, a reload), answer every parked poll with `304` at once:
    uvicorn waits for open requests before it exits, and a poll could otherwise hold the
    worker for up to five minutes, until gunicorn kills it mid-answer. The devices poll again
    and reach another worker."""
    while not server.should_exit:
        await asyncio.sleep(0.1)
    from django.apps import apps

    # Imported late: gunicorn loads this module before Django's apps (and the benchmark's
    # bare app never loads them).
    if apps.ready:
        from provisioning import longpoll

        longpoll.hub.close()


async def exit_when_orphaned(server: Server, master: int) -> None:
    """A worker whose master died (`kill -9`) is re-parented (to pid 1) and would serve on,
    holding the port, so a restarted server could not bind: it stops, gracefully, within
    about a second."""
    while not server.should_exit:
        if os.getppid() != master:
            log.warning("the gunicorn master (pid %d) is gone: this worker stops", master)
            server.should_exit = True
            return
        await asyncio.sleep(ORPHAN_CHECK_S)
