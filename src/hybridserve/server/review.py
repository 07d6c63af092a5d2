"""Admin endpoints of the quality loop (scope ``admin``): the review queue
(``/v1/admin/review...``: list, show and resolve the cases a route abstained on, a resolution
recording the API key's name) and the progressive rollouts (``/v1/admin/rollouts``: where each
active one is, with its current step's figures, as ``hybridserve rollout status`` prints).
"""

from __future__ import annotations

import asyncio

from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hybridserve.errors import InvalidInput, NotFound
from hybridserve.quality.review import ReviewQueue, Status, feed_back
from hybridserve.quality.rollout import report
from hybridserve.routing.schema import ResolveRequest, parse
from hybridserve.server.errors import json_response
from hybridserve.server.requests import authorize, json_body, state_of

_RESOLVE = TypeAdapter(ResolveRequest)
STATUSES = ("open", "resolved", "all")
MAX_LIMIT = 1000


def _queue(request: Request) -> ReviewQueue:
    return ReviewQueue(state_of(request).services.registry.engine)


def _case_id(request: Request) -> int:
    text = request.path_params["case_id"]
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise NotFound(f"no review case {text!r}: case ids are whole numbers")
    return int(text)


def _limit(text: str | None) -> int:
    if text is None:
        return 50
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidInput(f"limit: expected a whole number from 1 to {MAX_LIMIT}, got {text!r}")
    return int(text)


async def list_cases(request: Request) -> Response:
    authorize(request, "admin")
    params = request.query_params
    status = params.get("status", "open")
    if status not in STATUSES:
        raise InvalidInput(f"status: expected one of {', '.join(STATUSES)}, got {status!r}")
    chosen: Status | None = None if status == "all" else "open" if status == "open" else "resolved"
    cases = await asyncio.to_thread(
        _queue(request).cases,
        queue=params.get("queue"),
        route=params.get("route"),
        status=chosen,
        limit=_limit(params.get("limit")),
    )
    return json_response(200, {"cases": [c.to_json() for c in cases]})


async def show_case(request: Request) -> Response:
    authorize(request, "admin")
    case = await asyncio.to_thread(_queue(request).get, _case_id(request))
    return json_response(200, case.to_json())


async def resolve_case(request: Request) -> Response:
    actor = authorize(request, "admin")
    body = parse(_RESOLVE, await json_body(request))
    case = await asyncio.to_thread(
        _queue(request).resolve,
        _case_id(request),
        body.label,
        actor=actor,
        note=body.note,
    )
    await asyncio.to_thread(feed_back, case, state_of(request).feedback)
    return json_response(200, case.to_json())


async def rollouts(request: Request) -> Response:
    authorize(request, "admin")
    state = state_of(request)
    found = await asyncio.to_thread(report, state.services.registry, state.project)
    return json_response(200, {"rollouts": found})


def routes() -> list[Route]:
    return [
        Route("/v1/admin/rollouts", rollouts),
        Route("/v1/admin/review", list_cases),
        Route("/v1/admin/review/{case_id}", show_case),
        Route("/v1/admin/review/{case_id}/resolve", resolve_case, methods=["POST"]),
    ]
