"""gunicorn worker: uvicorn's event loop and HTTP parser, serving `iotconnector.asgi`."""

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
