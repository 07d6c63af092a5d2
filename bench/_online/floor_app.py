"""Server (a), the HTTP floor: a bare ASGI app that ignores the body and returns a constant JSON.

Run with ``uvicorn floor_app:app --loop uvloop --http httptools``; ``rsgi_app`` is the same floor
for ``granian --interface rsgi``. Both still read the whole request body, as every other server
must, so the floor includes receiving the same bytes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BODY = b'{"score":0.0}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Drain the request body, answer 200 with a constant JSON object."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


class RsgiFloor:
    """The same floor for granian's RSGI interface (``granian --interface rsgi``)."""

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        await proto()  # the whole request body
        proto.response_bytes(200, RSGI_HEADERS, BODY)


RSGI_HEADERS = [("content-type", "application/json")]
rsgi_app = RsgiFloor()
