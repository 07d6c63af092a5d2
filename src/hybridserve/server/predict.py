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
from typing import Any

from hybridserve.errors import NotFound
from hybridserve.observability.access import AccessLog
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

    __slots__ = ("access", "max_body", "state")

    def __init__(self, state: ServerState, access: AccessLog) -> None:
        self.state = state
        self.access = access
        self.max_body = state.project.server.max_body_size

    async def __call__(
        self, path: str, key: bytes | None, rid: str, read: ReadBody, traceparent: str | None = None
    ) -> Reply:
        """Answer one request. ``traceparent``: the caller's W3C trace context (the fronts read
        the header only while tracing is on)."""
        if self.state.tracing.enabled:
            with self.state.tracing.request("POST /v1/predict", traceparent) as span:
                reply = await self._answer(path, key, rid, read)
                _describe(span, path, reply)
                return reply
        return await self._answer(path, key, rid, read)

    async def _answer(self, path: str, key: bytes | None, rid: str, read: ReadBody) -> Reply:
        started = perf_counter()
        state = self.state
        route = path[len(PREFIX) :]
        try:
            if state.auth.enabled:
                state.auth.check(key, "predict")
            if route not in state.project.routes:
                state.project.route(route)  # raises RouteNotFound with the known routes
            req = parse_predict_request(await read(self.max_body))
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
            if isinstance(exc, NotFound):
                known = route in state.project.routes
                state.metrics.child(
                    "requests", route[:64] if known else "unknown", "none", "not_found"
                ).inc()
            status, body, extra = error_reply(exc, rid)
            reply = Reply(
                status, dumps(body), [_CONTENT_TYPE, ("x-request-id", rid), *extra.items()]
            )
        if state.access_log:
            ms = round((perf_counter() - started) * 1000, 3)
            self.access.write(rid, "POST", path, reply.status, ms)
        return reply


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
