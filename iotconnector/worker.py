"""gunicorn worker: uvicorn's event loop and HTTP parser, serving `iotconnector.asgi`."""

import asyncio
import sys

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker


class Worker(UvicornWorker):
    CONFIG_KWARGS = {
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        # Forwarded headers are judged by the app itself against TRUSTED_PROXIES
        # (iotconnector.middleware); uvicorn must pass the real peer address through.
        "proxy_headers": False,
        "server_header": False,
    }

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        server = Server(config=self.config)
        self._install_sigquit_handler()
        watcher = asyncio.create_task(release_polls_on_exit(server))
        await server.serve(sockets=self.sockets)
        watcher.cancel()
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


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
