"""``POST /v1/predict/{route}``: the one request path every HTTP front serves.

The rules of a predict request live here once: the API key, the route, the body limit, parsing,
the router's answer, its headers, the error body and the access log line. A front (the ASGI
handler in :mod:`.app` behind uvicorn, the RSGI handler in :mod:`.rsgi` behind granian) only
moves bytes: it hands over the path, the presented key, the request id and a way to read the
body within a limit, and sends the :class:`Reply` it gets back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Protocol

from hybridserve.errors import NotFound, Overloaded
from hybridserve.observability.access import AccessLog
from hybridserve.routing.admission import Admission
from hybridserve.routing.schema import parse_predict_request
from hybridserve.server.errors import JSON, dumps, error_reply
from hybridserve.server.state import ServerState

PREFIX = "/v1/predict/"
ReadBody = Callable[[int], Awaitable[bytes]]
"""Reads the whole request body, refusing more than the given number of bytes (a 413)."""

_CONTENT_TYPE = ("content-type", JSON)
_RETRY = ("retry-after", "1")


@dataclass(slots=True)
class Reply:
    """An answer ready to send: status, JSON bytes, headers (content-length is the front's)."""

    status: int
    body: bytes
    headers: list[tuple[str, str]]


class PredictEndpoint:
    """Serves predict requests for one process's :class:`ServerState`."""

    __slots__ = ("access", "admission", "max_body", "state")

    def __init__(self, state: ServerState, access: AccessLog) -> None:
        self.state = state
        self.access = access
        server = state.project.server
        self.max_body = server.max_body_size
        self.admission = Admission(
            state.router.lag,
            max_in_flight=server.admission.max_in_flight,
            max_wait=server.admission.max_wait,
        )

    async def __call__(
        self,
        path: str,
        key: bytes | None,
        rid: str,
        read: ReadBody,
        traceparent: str | None = None,
        stream: Stream | None = None,
    ) -> Reply | None:
        """Answer one request. ``traceparent``: the caller's W3C trace context (the fronts read
        the header only while tracing is on). ``stream``: the caller asked for answers as they
        come (``Accept: application/x-ndjson`` or ``text/event-stream``); they are written to it
        and ``None`` is returned, unless the request fails before the first answer (a 4xx: the
        ordinary error reply)."""
        if self.state.tracing.enabled:
            with self.state.tracing.request("POST /v1/predict", traceparent) as span:
                reply = await self._answer(path, key, rid, read, stream)
                if reply is not None and span.is_recording():
                    _describe(span, path, reply)
                return reply
        return await self._answer(path, key, rid, read, stream)

    async def _answer(
        self, path: str, key: bytes | None, rid: str, read: ReadBody, stream: Stream | None
    ) -> Reply | None:
        started = perf_counter()
        state = self.state
        route = path[len(PREFIX) :]
        lines = None
        admission = self.admission
        arrived: float | None = None
        try:
            if state.auth.enabled:
                state.auth.check(key, "predict")
            # project.route raises RouteNotFound, naming the known routes
            cfg = state.project.routes.get(route) or state.project.route(route)
            refused = admission.refuse(cfg.latency_budget)
            if refused is not None:
                raise refused
            arrived = admission.enter()
            req = parse_predict_request(await read(self.max_body))
            if stream is not None:
                lines = AnswerLines(stream, rid, route)
                outcome = await state.router.predict(route, req, rid, lines.answered)
                await lines.finish(outcome)
                self._log(rid, path, 200, started)
                return None
            outcome = await state.router.predict(route, req, rid)
            headers = [
                _CONTENT_TYPE,
                ("x-request-id", rid),
                ("x-model-version", outcome.model_version),
                ("x-source", outcome.sources),
            ]
            if outcome.status == 503:  # see error_reply: the same rule for the router's 503
                headers.append(_RETRY)
            reply = Reply(outcome.status, dumps(outcome.body), headers)
        except Exception as exc:
            if lines is not None and lines.started:  # answers went out: end the stream saying so
                status, body, _ = error_reply(exc, rid)
                await lines.fail(body)
                self._log(rid, path, status, started)
                return None
            if isinstance(exc, NotFound):
                known = route in state.project.routes
                state.metrics.child(
                    "requests", route[:64] if known else "unknown", "none", "not_found"
                ).inc()
            elif isinstance(exc, Overloaded):  # shed: counts against the route's SLO
                state.metrics.child("requests", route, "none", "shed").inc()
                state.router.tally.record(route, perf_counter() - started, {}, 0, 1)
            status, body, extra = error_reply(exc, rid)
            reply = Reply(
                status, dumps(body), [_CONTENT_TYPE, ("x-request-id", rid), *extra.items()]
            )
        finally:
            if arrived is not None:
                admission.leave(arrived, cfg.latency_budget)
        self._log(rid, path, reply.status, started)
        return reply

    def _log(self, rid: str, path: str, status: int, started: float) -> None:
        if self.state.access_log:
            ms = round((perf_counter() - started) * 1000, 3)
            self.access.write(rid, "POST", path, status, ms)


class Stream(Protocol):
    """A streamed answer, as a front sends one (chunked HTTP/1.1), in ``media``: NDJSON or SSE."""

    media: str

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None: ...
    async def send(self, chunk: bytes) -> None: ...
    async def end(self) -> None: ...


NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


def streamed(accept: str | None) -> str | None:
    """The streamed format a request's ``Accept`` asks for (``None``: one JSON answer)."""
    if not accept:
        return None
    if NDJSON in accept:
        return NDJSON
    if SSE in accept:
        return SSE
    return None


class AnswerLines:
    """Answers written as they come: one JSON line per entity (NDJSON), or one server-sent
    event each (``data: ...``), then a summary (the SSE ``event: summary``).

    Stored answers go out at once, computed ones as their micro-batch finishes, fallbacks
    last; the summary says how many were answered and, for those that were not, why (the
    same trail a 503 gives).
    """

    __slots__ = ("_out", "_rid", "_route", "_sse", "started")

    def __init__(self, out: Stream, rid: str, route: str) -> None:
        self._out, self._rid, self._route = out, rid, route
        self._sse = out.media == SSE
        self.started = False

    def _line(self, body: Any, event: str | None = None) -> bytes:
        if self._sse:
            head = f"event: {event}\n".encode() if event else b""
            return head + b"data: " + dumps(body) + b"\n\n"
        return dumps(body) + b"\n"

    async def _start(self) -> None:
        if not self.started:
            self.started = True
            media = SSE if self._sse else NDJSON
            await self._out.start(200, [("content-type", media), ("x-request-id", self._rid)])

    async def answered(self, answers: list[dict[str, Any]]) -> None:
        await self._start()
        await self._out.send(b"".join(self._line(a) for a in answers))

    async def finish(self, outcome: Any) -> None:
        await self._start()
        body = outcome.body
        unanswered = body.get("unanswered", [])
        summary = {
            "summary": True,
            "request_id": self._rid,
            "route": self._route,
            "answered": len(body["predictions"]),
            "unanswered": unanswered,
            "model_version": outcome.model_version,
            "sources": [s for s in outcome.sources.split(",") if s],
        }
        await self._out.send(self._line(summary, "summary"))
        await self._out.end()

    async def fail(self, error: dict[str, Any]) -> None:
        await self._out.send(self._line({"summary": True, **error}, "error"))
        await self._out.end()


def _describe(span: Any, path: str, reply: Reply) -> None:
    """A request span's attributes, from the answer it gave."""
    headers = dict(reply.headers)
    sources = [s for s in headers.get("x-source", "").split(",") if s]
    span.set_attribute("hybridserve.route", path[len(PREFIX) :])
    span.set_attribute("http.response.status_code", reply.status)
    span.set_attribute("hybridserve.request_id", headers.get("x-request-id", ""))
    span.set_attribute("hybridserve.sources", sources)
    span.set_attribute("hybridserve.model_version", headers.get("x-model-version", ""))
    span.set_attribute(
        "hybridserve.degraded",
        reply.status != 200 or any(s.startswith("fallback") for s in sources),
    )
