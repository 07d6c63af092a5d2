"""``POST /v1/events/{stream}``: validate events and append them to the stream's source.

The body is one event object or a list of them. Every event is checked against the stream's
declared fields first (a 400 names the event and the field); only a fully valid body is
appended, so nothing is half-written. Answers 202 with the count and the source's ids: the
consumer does the rest. Needs the ``ingest`` scope when auth is on.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hybridserve.errors import InvalidInput, PayloadTooLarge
from hybridserve.records import now
from hybridserve.server.errors import json_response
from hybridserve.server.requests import authorize, state_of
from hybridserve.streaming.events import BadEvent, validate
from hybridserve.streaming.sources import stream_config

MAX_EVENTS = 10_000


async def post_events(request: Request) -> Response:
    authorize(request, "ingest")
    state = state_of(request)
    name = request.path_params["stream"]
    cfg = stream_config(state.project, name)  # 404 for an unknown stream
    raw = await request.body()
    if len(raw) > state.project.server.max_body_size:
        raise PayloadTooLarge(f"body exceeds {state.project.server.max_body_size} bytes")
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    events = body if isinstance(body, list) else [body]
    if not events:
        raise InvalidInput("expected an event object or a non-empty list of events")
    if len(events) > MAX_EVENTS:
        raise InvalidInput(f"at most {MAX_EVENTS} events per request, got {len(events)}")
    at = now()
    for i, event in enumerate(events):
        try:
            validate(cfg, event, at=at)
        except BadEvent as exc:
            where = f"events[{i}]." if isinstance(body, list) else ""
            raise InvalidInput(where + exc.message, index=i, **exc.details) from None
    ids = await state.ingest.get(name).append([orjson.dumps(e) for e in events])
    state.metrics.events.labels(name, "accepted").inc(len(events))
    return json_response(202, {"stream": name, "accepted": len(events), "ids": ids})


def routes() -> list[Route]:
    return [Route("/v1/events/{stream}", post_events, methods=["POST"])]
