"""``GET /v1/health`` and ``GET /v1/slo``: thin adapters over :mod:`hybridserve.operations`.

``/v1/health`` answers 200 unless the project is critical (503, the same body), so a probe
or a load balancer can use the status alone. ``/v1/slo`` publishes this process's counters
first, so its figures include every answer given so far by this worker (the others' are at
most one ``health.publish_interval`` behind). Both need the ``admin`` scope when auth is on.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hybridserve.operations.slo import store_report
from hybridserve.server.errors import json_response
from hybridserve.server.requests import authorize, state_of


async def health(request: Request) -> Response:
    authorize(request, "read")
    report = await state_of(request).health(max_age=0.0)
    return json_response(503 if report.critical else 200, report.to_json())


async def slo(request: Request) -> Response:
    authorize(request, "read")
    state = state_of(request)
    if state.publisher is not None:
        await state.publisher.publish()
    body = await store_report(
        state.project,
        state.services.predictions_kv,
        request.query_params.get("route"),
        request.query_params.get("window"),
    )
    return json_response(200, body)


def routes() -> list[Route]:
    return [Route("/v1/health", health), Route("/v1/slo", slo)]
