"""``GET /dashboard``: the live operations page, and ``GET /v1/dashboard/data``, its figures.

The page and its files (``static/dashboard/``, and uPlot from the npm package ``uplot`` in
``static/uplot/``) ship inside the package: nothing is loaded from another origin, so the
page works without internet access. They hold no data and are served to anyone; the figures
come from ``/v1/dashboard/data``, which needs a key with the ``read`` (or ``admin``) scope
when auth is on. The page asks for the key and keeps it in ``sessionStorage`` only.

The figures are computed by :class:`hybridserve.observability.dashboard.Dashboard` from the
text ``/metrics`` answers; this module adds what only the server can gather: each stream's
status and each batch job's last runs (read at most every :data:`SLOW_EVERY` seconds, as
they touch the stream source and the run directories).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hybridserve.batch.manifest import runs
from hybridserve.server.errors import json_response
from hybridserve.server.requests import authorize, state_of
from hybridserve.server.state import ServerState
from hybridserve.streaming.status import stream_status

log = logging.getLogger("hybridserve.server")
UPLOT_VERSION = "1.6.32"
SLOW_EVERY = 5.0
LAST_RUNS = 5
_STATIC = files("hybridserve.server") / "static"
ASSETS = {
    "/dashboard/dashboard.js": ("dashboard/dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard/dashboard.css": ("dashboard/dashboard.css", "text/css; charset=utf-8"),
    "/dashboard/uPlot.iife.min.js": ("uplot/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    "/dashboard/uPlot.min.css": ("uplot/uPlot.min.css", "text/css; charset=utf-8"),
}


class _Slow:
    """Stream statuses and batch runs, refreshed at most every ``SLOW_EVERY`` seconds."""

    def __init__(self) -> None:
        self.at = 0.0
        self.streams: list[dict[str, Any]] = []
        self.runs: dict[str, list[dict[str, Any]]] = {}
        self._lock = asyncio.Lock()

    async def refresh(self, state: ServerState) -> None:
        async with self._lock:
            if time.monotonic() - self.at < SLOW_EVERY:
                return
            self.streams = [await _stream(state, name) for name in state.project.streams]
            self.runs = await asyncio.to_thread(_runs, state)
            self.at = time.monotonic()


async def _stream(state: ServerState, name: str) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(stream_status(state.services, name), 2.0)
    except Exception as exc:  # shown on the page: the dashboard must not fail with a stream
        log.warning("dashboard: stream %s status: %s", name, exc)
        return {"stream": name, "error": f"{type(exc).__name__}: {exc}"}


def _runs(state: ServerState) -> dict[str, list[dict[str, Any]]]:
    return {
        job: [m.to_dict() for m in runs(state.project, job)[:LAST_RUNS]]
        for job in state.project.batch_jobs
    }


def _data() -> Callable[[Request], Awaitable[Response]]:
    slow = _Slow()  # one per app

    async def data(request: Request) -> Response:
        authorize(request, "read")
        state = state_of(request)
        await slow.refresh(state)

        def figures() -> dict[str, Any]:  # parsing the scrape: off the event loop
            text = state.metrics_text()
            return state.dashboard.view(text, state.project, streams=slow.streams, runs=slow.runs)

        view = await asyncio.to_thread(figures)
        return json_response(200, view, {"cache-control": "no-store"})

    return data


def _file(name: str, media_type: str) -> Callable[[Request], Awaitable[Response]]:
    content = (_STATIC / name).read_bytes()

    async def serve(_request: Request) -> Response:
        return Response(content, media_type=media_type, headers={"cache-control": "no-cache"})

    return serve


def routes() -> list[Route]:
    return [
        Route("/dashboard", _file("dashboard/index.html", "text/html; charset=utf-8")),
        Route("/v1/dashboard/data", _data()),
        *(Route(path, _file(name, media)) for path, (name, media) in ASSETS.items()),
    ]
