"""The ASGI application: the composition root of a serving process.

``POST /v1/predict/{route}`` is served by a pure-ASGI handler (no framework routing, no
middleware stack: it is the hot path); everything else (the Open Inference Protocol, admin,
metrics, docs) is a Starlette app behind it. Errors become JSON here on the hot path (the
body from :func:`~hybridserve.server.http.error_body`) and in :mod:`hybridserve.server.errors`
for the Starlette app.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Route

from hybridserve.config import Project
from hybridserve.errors import HybridServeError, NotFound
from hybridserve.observability.access import AccessLog
from hybridserve.routing.schema import parse_predict_request
from hybridserve.server import admin, docs, events, feedback, v2
from hybridserve.server.auth import presented_key
from hybridserve.server.errors import exception_handlers
from hybridserve.server.http import (
    BodyDeadline,
    Receive,
    Scope,
    Send,
    error_body,
    read_body,
    request_id,
    send_json,
)
from hybridserve.server.state import ServerState
from hybridserve.services import freeze_loaded

log = logging.getLogger("hybridserve.server")
_PREDICT = "/v1/predict/"


class HybridApp:
    """The server: the fast predict path in front of a Starlette app for the rest."""

    def __init__(self, state: ServerState, *, grpc_address: str | None = None) -> None:
        self.state = state
        self.grpc_address = grpc_address
        self.max_body = state.project.server.max_body_size
        self.body_timeout = state.project.server.body_timeout
        routes: list[Any] = [
            # Listed so that the route table is whole (the document is checked against it,
            # and a GET gets a 405): POSTs never get this far, __call__ serves them first.
            Route(_PREDICT + "{route}", self, methods=["POST"]),
            *v2.routes(),
            *admin.routes(),
            *events.routes(),
            *feedback.routes(),
            *docs.routes(),
        ]
        self.starlette = Starlette(
            routes=routes, lifespan=self._lifespan, exception_handlers=exception_handlers()
        )
        self.starlette.state.hs = state
        self.access = AccessLog()

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
        bounded = BodyDeadline(receive, send, self.body_timeout)
        if scope["path"].startswith(_PREDICT) and scope["method"] == "POST":
            await self.predict(scope, bounded.receive, bounded.send)
        else:
            await self.starlette(scope, bounded.receive, bounded.send)

    async def predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        route = scope["path"][len(_PREDICT) :]
        rid = request_id(scope)
        state = self.state
        status = 500
        try:
            if state.auth.enabled:
                state.auth.check(presented_key(scope), "predict")
            if route not in state.project.routes:
                state.project.route(route)  # raises RouteNotFound with the known routes
            body = await read_body(scope, receive, self.max_body)
            req = parse_predict_request(body)
            outcome = await state.router.predict(route, req, rid)
            status = outcome.status
            await send_json(
                send,
                status,
                outcome.body,
                [
                    (b"x-request-id", rid.encode()),
                    (b"x-model-version", outcome.model_version.encode()),
                    (b"x-source", outcome.sources.encode()),
                    # Nothing could answer in time: say when to ask again, rather than let
                    # clients retry at once into the same overload or outage.
                    *([(b"retry-after", b"1")] if status == 503 else []),
                ],
            )
        except HybridServeError as exc:
            status = exc.status
            if isinstance(exc, NotFound):
                state.metrics.child(
                    "requests",
                    route[:64] if route in state.project.routes else "unknown",
                    "none",
                    "not_found",
                ).inc()
            await send_json(send, status, error_body(exc, rid), [(b"x-request-id", rid.encode())])
        except Exception:
            log.exception("request %s failed", rid)
            await send_json(send, 500, {"error": "internal error", "request_id": rid})
        if state.access_log:
            self.access.write(
                rid,
                "POST",
                scope["path"],
                status,
                round((time.perf_counter() - started) * 1000, 3),
            )


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
