"""A webhook receiver for scripts/bench_events.py: answers every POST 204 and keeps, per
event, the lag from its commit (`timestamp`) to its arrival. `GET /stats` answers
{count, duplicates, p50_ms, p99_ms, max_ms, first_s, last_s}; `DELETE /stats` starts over.

    .venv/bin/uvicorn event_receiver:app --app-dir scripts --port 8799 --log-level warning
"""

from __future__ import annotations

import json
import time

seen: set[str] = set()
lags_ms: list[float] = []
duplicates = [0]
window = [0.0, 0.0]


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    status, answer = 204, b""
    if scope["method"] == "POST":
        now = time.time()
        events = json.loads(body)
        for event in events if isinstance(events, list) else [events]:
            if event["id"] in seen:
                duplicates[0] += 1
                continue
            seen.add(event["id"])
            lags_ms.append((now * 1_000_000 - event["timestamp"]) / 1000)
        window[0] = window[0] or now
        window[1] = now
    elif scope["method"] == "GET":
        ordered = sorted(lags_ms)

        def at(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else 0

        status = 200
        answer = json.dumps(
            {
                "count": len(ordered),
                "duplicates": duplicates[0],
                "p50_ms": at(0.5),
                "p99_ms": at(0.99),
                "max_ms": round(ordered[-1], 1) if ordered else 0,
                "first_s": window[0],
                "last_s": window[1],
            }
        ).encode()
    elif scope["method"] == "DELETE":
        seen.clear()
        lags_ms.clear()
        duplicates[0] = 0
        window[:] = [0.0, 0.0]
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": answer})
