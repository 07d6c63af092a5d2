"""``POST /v1/events/{stream}``: validate events and append them to the stream's source.

The body is one event object or a list of them. Every event is checked against the stream's
declared fields and limits first (a 400, or a 413 for an event or field over its size limit,
names the event and the field); only a fully valid body is appended, so nothing is
half-written. Answers 202 with the count and the source's ids: the consumer does the rest.
A stream whose source is ``memory`` is refused with a 409: that log lives in this server's
process, where no consumer runs, so its events would be accepted and never read. Needs the
``ingest`` scope when auth is on.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hybridserve.errors import Conflict, InvalidInput, PayloadTooLarge
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
    if cfg.source.kind == "memory":
        raise Conflict(
            f"stream {name!r} has an in-process (memory) source and no consumer runs in this "
            f"server, so its events would never be read; set streams.{name}.source.kind to "
            "redis, kafka or nats (or replay, with a directory path) and run `hybridserve stream`",
            stream=name,
        )
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
    payloads = [orjson.dumps(e) for e in events]  # what is appended, and what is measured
    for i, (event, payload) in enumerate(zip(events, payloads, strict=True)):
        try:
            validate(cfg, event, at=at, size=len(payload))
        except BadEvent as exc:
            where = f"events[{i}]." if isinstance(body, list) else ""
            raise type(exc)(where + exc.message, index=i, **exc.details) from None
    ids = await state.ingest.get(name).append(payloads)
    state.metrics.events.labels(name, "accepted").inc(len(events))
    return json_response(202, {"stream": name, "accepted": len(events), "ids": ids})


def routes() -> list[Route]:
    return [Route("/v1/events/{stream}", post_events, methods=["POST"])]
