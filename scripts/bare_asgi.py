"""A bare ASGI app that answers every request 204: what the server's worker (gunicorn +
uvicorn, `iotconnector.worker.Worker`) costs by itself, for scripts/bench_device_api.py.

    gunicorn bare_asgi:app -k iotconnector.worker.Worker --chdir scripts
"""

from __future__ import annotations


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})
