"""granian's RSGI front: the predict path called straight from Rust, the rest through ASGI.

RSGI (granian's own interface) hands a request over as a scope object and a protocol whose
``response_bytes`` sends a whole answer in one call, with no ASGI message dictionaries and no
Python HTTP parsing. ``POST /v1/predict/{route}`` is answered that way, by the same
:class:`~hybridserve.server.predict.PredictEndpoint` the ASGI front uses. Every other request
(the Open Inference Protocol, admin, metrics, docs, events) goes to the same
:class:`~hybridserve.server.app.HybridApp` as an ASGI call, through :func:`asgi_call`, so there
is one app and one set of endpoints whichever front serves it.

RSGI has no lifespan protocol: :meth:`RsgiApp.__rsgi_init__` and :meth:`RsgiApp.__rsgi_del__`
run the app's start and stop on the worker's event loop before it serves and after it drained.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

from hybridserve.errors import HybridServeError
from hybridserve.server.app import HybridApp
from hybridserve.server.auth import key_from
from hybridserve.server.errors import JSON, dumps, error_reply
from hybridserve.server.http import Message, ReadDeadlines, declared_length, request_id, too_large
from hybridserve.server.predict import PREFIX, Reply, streamed


class Headers(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...
    def items(self) -> list[tuple[str, str]]: ...


class Scope(Protocol):
    proto: str
    http_version: str
    scheme: str
    method: str
    path: str
    query_string: str
    client: str
    server: str

    @property
    def headers(self) -> Headers: ...


def _raw(value: str | None) -> bytes | None:
    return None if value is None else value.encode()


async def read_body(
    proto: Any, length: str | None, limit: int, timeout: float, deadlines: ReadDeadlines
) -> bytes:
    """The whole body within ``limit`` bytes and ``timeout`` seconds (the ASGI front's rules)."""
    declared = declared_length(length, limit)
    due = asyncio.get_running_loop().time() + timeout
    if declared is not None:  # the framing bounds it: read it in one call
        return await deadlines.read(proto(), due, timeout)
    return await deadlines.read(_chunked(proto, limit), due, timeout)


async def _chunked(proto: Any, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in proto:
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


class RsgiApp:
    """A :class:`HybridApp` served over RSGI."""

    def __init__(self, app: HybridApp) -> None:
        self.app = app
        self.endpoint = app.endpoint
        self.timeout = app.body_timeout
        self._running: contextlib.AbstractAsyncContextManager[None] | None = None

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._running = self.app.running()
        loop.run_until_complete(self._running.__aenter__())

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._running is not None:
            loop.run_until_complete(self._running.__aexit__(None, None, None))

    async def __rsgi__(self, scope: Scope, proto: Any) -> None:
        if scope.proto != "http":
            return  # no websocket endpoints: granian closes the connection
        if scope.method == "POST" and scope.path.startswith(PREFIX):
            reply = await self._predict(scope, proto)
            if reply is not None:  # else it was streamed
                proto.response_bytes(reply.status, reply.headers, reply.body)
        else:
            await asgi_call(self.app, scope, proto)

    async def _predict(self, scope: Scope, proto: Any) -> Reply | None:
        h = scope.headers
        key = None
        if self.endpoint.state.auth.enabled:
            key = key_from(_raw(h.get("x-api-key")), _raw(h.get("authorization")))
        rid = request_id(h.get("x-request-id"))
        length = h.get("content-length")
        expired = False

        async def read(limit: int) -> bytes:
            nonlocal expired
            try:
                return await read_body(proto, length, limit, self.timeout, self.app.deadlines)
            except HybridServeError as exc:
                expired = exc.status == 408
                raise

        traceparent = h.get("traceparent") if self.endpoint.state.tracing.enabled else None
        media = streamed(h.get("accept"))
        stream = RsgiStream(proto, media) if media else None
        reply = await self.endpoint(scope.path, key, rid, read, traceparent, stream)
        if reply is not None and expired:  # the rest of the body may come: the connection ends
            reply.headers.append(("connection", "close"))
        return reply


class RsgiStream:
    """A streamed answer over RSGI: granian's stream transport, ended when the handler returns."""

    __slots__ = ("_proto", "_transport", "media")

    def __init__(self, proto: Any, media: str) -> None:
        self._proto, self.media = proto, media
        self._transport: Any = None

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self._transport = self._proto.response_stream(status, headers)

    async def send(self, chunk: bytes) -> None:
        await self._transport.send_bytes(chunk)

    async def end(self) -> None:
        pass


async def asgi_call(app: HybridApp, scope: Scope, proto: Any) -> None:
    """Serve one RSGI request through the ASGI app: its scope, ``receive`` and ``send``."""
    asgi_scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": scope.http_version,
        "method": scope.method,
        "scheme": scope.scheme,
        "path": scope.path,
        "raw_path": scope.path.encode(),
        "query_string": scope.query_string.encode("latin-1"),
        "root_path": "",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in scope.headers.items()],
        "client": _address(scope.client),
        "server": _address(scope.server),
        "state": {},
    }
    body = _Body(proto)
    out = _Response(proto)
    try:
        await app(asgi_scope, body.receive, out.send)
    except Exception as exc:
        if out.started:
            raise
        status, err, headers = error_reply(exc)
        proto.response_bytes(status, [("content-type", JSON), *headers.items()], dumps(err))
        return
    out.finish()


def _address(text: str) -> tuple[str, int] | None:
    host, sep, port = text.rpartition(":")
    return (host.strip("[]"), int(port)) if sep and port.isdigit() else None


class _Body:
    """``receive`` for an ASGI call: the body as it arrives, then a wait for the disconnect."""

    __slots__ = ("_chunks", "_done", "_proto")

    def __init__(self, proto: Any) -> None:
        self._proto = proto
        self._chunks: Any = None
        self._done = False

    async def receive(self) -> Message:
        if self._done:
            await self._proto.client_disconnect()
            return {"type": "http.disconnect"}
        if self._chunks is None:
            self._chunks = aiter(self._proto)
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            self._done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}


class _Response:
    """``send`` for an ASGI call: one ``response_bytes`` for a whole answer, else a stream."""

    __slots__ = ("_headers", "_proto", "_status", "_stream", "started")

    def __init__(self, proto: Any) -> None:
        self._proto = proto
        self._status = 500
        self._headers: list[tuple[str, str]] = []
        self._stream: Any = None
        self.started = False

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self._status = message["status"]
            self._headers = [
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", ())
            ]
            self.started = True
        elif kind == "http.response.body":
            chunk = message.get("body", b"")
            if self._stream is None and not message.get("more_body", False):
                self._proto.response_bytes(self._status, self._headers, chunk)
                self._status = 0  # sent
                return
            if self._stream is None:
                self._stream = self._proto.response_stream(self._status, self._headers)
            if chunk:
                await self._stream.send_bytes(chunk)

    def finish(self) -> None:
        """An answer that never sent its body (a bare start) still ends."""
        if self.started and self._stream is None and self._status:
            self._proto.response_bytes(self._status, self._headers, b"")
