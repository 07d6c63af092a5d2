"""Server (b), the naive server: parse the JSON, build a 1x30 row, call ``predict_proba`` inline.

This is what most teams write first, kept as lean as possible so it is a strong baseline: a bare
ASGI app (the floor app plus the model call; no framework overhead), run on uvicorn with uvloop
and httptools. Each request is scored on its own, on the event loop, one row at a time.

It accepts the same body as hybridserve's request-features route, so (b), (c) and (e) are sent
identical bytes: ``{"entities": [{"key": ..., "features": {name: value, ...}}], "mode": ...}``.
Environment: ``BENCH_MODEL`` (joblib file of the fitted estimator), ``BENCH_FEATURES``
(comma-separated feature names, in the model's column order).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import joblib
import numpy as np

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MODEL = joblib.load(os.environ["BENCH_MODEL"])
FEATURES = os.environ["BENCH_FEATURES"].split(",")
JSON = [(b"content-type", b"application/json")]


async def _reply(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [*JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Score the first entity of the request inline and return its fraud probability."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    try:
        entity = json.loads(b"".join(chunks))["entities"][0]
        values = entity["features"]
        row = np.array([[float(values[name]) for name in FEATURES]], dtype=np.float64)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        await _reply(send, 400, {"error": f"bad request: {exc!r}"})
        return
    score = float(MODEL.predict_proba(row)[0, 1])
    await _reply(send, 200, {"entity": entity["key"], "score": score, "label": int(score >= 0.5)})
