"""The ASGI application: the composition root of a serving process.

``POST /v1/predict/{route}`` is served by a pure-ASGI handler (no framework routing, no
middleware stack: it is the hot path) over :class:`~hybridserve.server.predict.PredictEndpoint`,
which granian's RSGI front (:mod:`.rsgi`) serves too; everything else (the Open Inference
Protocol, admin, metrics, docs) is a Starlette app behind it. Errors become JSON in one place,
:func:`hybridserve.server.errors.error_reply`, whichever way a request came.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Route

from hybridserve.config import Project
from hybridserve.observability.access import AccessLog
from hybridserve.server import admin, dashboard, docs, events, feedback, operations, review, v2
from hybridserve.server.auth import presented_key
from hybridserve.server.errors import exception_handlers
from hybridserve.server.http import (
    BodyDeadline,
    ReadDeadlines,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    request_id,
    send_reply,
)
from hybridserve.server.predict import PREFIX, PredictEndpoint, streamed
from hybridserve.server.state import ServerState
from hybridserve.services import freeze_loaded

log = logging.getLogger("hybridserve.server")
_RID = b"x-request-id"


class HybridApp:
    """The server: the fast predict path in front of a Starlette app for the rest."""

    def __init__(self, state: ServerState, *, grpc_address: str | None = None) -> None:
        self.state = state
        self.grpc_address = grpc_address
        self.body_timeout = state.project.server.body_timeout
        self.deadlines = ReadDeadlines()
        """Every body read's deadline, checked together (``server/http.py``)."""
        routes: list[Any] = [
            # Listed so that the route table is whole (the document is checked against it,
            # and a GET gets a 405): POSTs never get this far, __call__ serves them first.
            Route(PREFIX + "{route}", self, methods=["POST"]),
            *v2.routes(),
            *admin.routes(),
            *review.routes(),
            *events.routes(),
            *feedback.routes(),
            *operations.routes(),
            *docs.routes(),
            *dashboard.routes(),
        ]
        self.starlette = Starlette(
            routes=routes, lifespan=self._lifespan, exception_handlers=exception_handlers()
        )
        self.starlette.state.hs = state
        self.access = AccessLog()
        self.endpoint = PredictEndpoint(state, self.access)

    def running(self) -> contextlib.AbstractAsyncContextManager[None]:
        """The app's start and stop (for a front without ASGI's lifespan protocol)."""
        return self._lifespan(self.starlette)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        await self.state.start()
        freeze_loaded()
        grpc_server = None
        try:
            if self.grpc_address is not None:
                from hybridserve.server.grpc.service import GrpcServer

                grpc_server = GrpcServer(self.state, self.grpc_address)
                await grpc_server.start()
            log.info(
                "ready: %d routes, models %s",
                len(self.state.project.routes),
                ", ".join(sorted({m.label for _, _, m in self.state.models.loaded()})),
            )
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(self.state.project.server.shutdown_timeout)
            await self.state.stop()
            self.access.flush()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.starlette(scope, receive, send)
            return
        # Every endpoint reads its body through the same deadline (a 408 after it).
        bounded = BodyDeadline(receive, send, self.body_timeout, self.deadlines)
        if scope["path"].startswith(PREFIX) and scope["method"] == "POST":
            await self.predict(scope, bounded.receive, bounded.send)
        else:
            await self.starlette(scope, bounded.receive, bounded.send)

    async def predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = presented_key(scope) if self.state.auth.enabled else None

        def read(limit: int) -> Awaitable[bytes]:
            return read_body(scope, receive, limit)

        rid = request_id(header(scope, _RID))
        tp = _text(header(scope, b"traceparent")) if self.state.tracing.enabled else None
        media = streamed(_text(header(scope, b"accept")))
        stream = AsgiStream(send, media) if media else None
        reply = await self.endpoint(scope["path"], key, rid, read, tp, stream)
        if reply is not None:
            await send_reply(send, reply.status, reply.body, reply.headers)


def _text(raw: bytes | None) -> str | None:
    return raw.decode("latin-1") if raw else None


class AsgiStream:
    """A streamed answer over ASGI: no content-length, so the server sends it chunked."""

    __slots__ = ("_send", "media")

    def __init__(self, send: Send, media: str) -> None:
        self._send, self.media = send, media

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        await self._send({"type": "http.response.start", "status": status, "headers": out})

    async def send(self, chunk: bytes) -> None:
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def end(self) -> None:
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})


def create_app(
    project: Project,
    *,
    access_log: bool = True,
    scheduler: bool = False,
    grpc_address: str | None = None,
) -> HybridApp:
    """Build the ASGI app for a project (models load when the lifespan starts).

    ``scheduler``: also start due cron batch jobs (``batch_jobs.*.schedule``) in the
    background; run it in one server process only. ``grpc_address`` (``host:port``): also
    serve the Open Inference Protocol over gRPC there, for the lifespan of the app.
    """
    state = ServerState.build(project, access_log=access_log, scheduler=scheduler)
    return HybridApp(state, grpc_address=grpc_address)


__all__ = ["HybridApp", "Route", "create_app"]
