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

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from hybridserve.errors import Conflict, InvalidInput, PayloadTooLarge, StoreError
from hybridserve.records import now
from hybridserve.routing.schema import decode
from hybridserve.server.errors import json_response
from hybridserve.server.requests import authorize, state_of
from hybridserve.streaming.events import BadEvent, validate
from hybridserve.streaming.sources import stream_config
from hybridserve.streaming.sources.base import Tails

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
    body: Any = decode(raw)
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


TAIL_BLOCK = 10.0
"""Seconds a tail waits for new outputs before it sends a keep-alive comment."""


async def tail_predictions(request: Request) -> Response:
    """``GET /v1/streams/{stream}/predictions``: the stream's outputs as server-sent events.

    Each output (one scored event) is an event whose ``id`` is its position in the output
    stream; a client that reconnects with ``Last-Event-ID`` (or ``?after=``) gets exactly what
    came after. Without one it gets what is written from now on. A comment is sent every
    ``TAIL_BLOCK`` seconds without outputs, so proxies keep the connection open.
    """
    authorize(request, "predict")
    state = state_of(request)
    name = request.path_params["stream"]
    cfg = stream_config(state.project, name)  # 404 for an unknown stream
    sink = state.ingest.get(name)
    if not isinstance(sink, Tails):
        raise Conflict(
            f"the outputs of stream {name!r} (source kind {cfg.source.kind}) cannot be tailed "
            "over HTTP; read them from the broker (see operations.md, 'Stream consumers')",
            stream=name,
        )
    after = request.headers.get("last-event-id") or request.query_params.get("after")
    if after is not None and not sink.valid_position(after):
        raise InvalidInput(f"Last-Event-ID: {after[:64]!r} is not a position of this stream")

    async def events() -> AsyncIterator[bytes]:
        position = after
        yield b": tailing the outputs of " + name.encode() + b"\n\n"
        while True:
            try:
                got = await sink.tail(position, TAIL_BLOCK, 500)
            except StoreError as exc:
                yield b"event: error\ndata: " + orjson.dumps({"error": exc.message}) + b"\n\n"
                return
            if not got:
                yield b": keep-alive\n\n"
                continue
            chunk = []
            for position, payload in got:
                chunk.append(b"id: " + position.encode() + b"\ndata: " + payload + b"\n\n")
            yield b"".join(chunk)

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )


def routes() -> list[Route]:
    return [
        Route("/v1/events/{stream}", post_events, methods=["POST"]),
        Route("/v1/streams/{stream}/predictions", tail_predictions, methods=["GET"]),
    ]
