"""``POST /v1/feedback/{route}``: true outcomes for the route's answers (scope ``ingest``).

The body is ``{"feedback": [{id, value, request_id | entity [, at]}, ...]}``, validated whole
before anything is kept (a 400 names the item and field). Answers 202 with how many were
kept and the ids already received (idempotent by id: a retried request changes nothing).
The outcomes are joined to the prediction log when quality is computed
(``quality/feedback.py``), so they may arrive before or long after the answers.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hybridserve.errors import PayloadTooLarge
from hybridserve.quality.feedback import Outcome
from hybridserve.routing.schema import parse_feedback
from hybridserve.server.errors import json_response
from hybridserve.server.requests import authorize, state_of


async def post_feedback(request: Request) -> Response:
    authorize(request, "ingest")
    state = state_of(request)
    route = request.path_params["route"]
    state.project.route(route)  # a 404 for an unknown route, before reading the body
    raw = await request.body()
    if len(raw) > state.project.server.max_body_size:
        raise PayloadTooLarge(f"body exceeds {state.project.server.max_body_size} bytes")
    body = parse_feedback(raw)
    outcomes = [Outcome(f.id, float(f.value), f.request_id, f.entity, f.at) for f in body.feedback]
    accepted, duplicates = await asyncio.to_thread(state.feedback.submit, route, outcomes)
    state.metrics.feedback.labels(route, "accepted").inc(accepted)
    if duplicates:
        state.metrics.feedback.labels(route, "duplicate").inc(len(duplicates))
    return json_response(202, {"route": route, "accepted": accepted, "duplicates": duplicates})


def routes() -> list[Route]:
    return [Route("/v1/feedback/{route}", post_feedback, methods=["POST"])]
