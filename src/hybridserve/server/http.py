"""Small raw-ASGI helpers for the hot path: read a bounded body, send a JSON answer, and
the request-level rules every endpoint shares (the body deadline, the request id)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from hybridserve.errors import HybridServeError, InvalidInput, PayloadTooLarge, RequestTimeout
from hybridserve.records import new_request_id

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_TYPE = (b"content-type", b"application/json")


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")


def request_id(scope: Scope) -> str:
    """The caller's ``X-Request-Id`` (up to 128 bytes of it) when it is visible ASCII, else a
    new id: a header that could not be echoed or logged as sent (not UTF-8, control
    characters) is ignored rather than failing the request."""
    raw = header(scope, b"x-request-id")
    if raw and _REQUEST_ID.fullmatch(raw[:128]):
        return raw[:128].decode("ascii")
    return new_request_id()


class BodyDeadline:
    """A request's ``receive`` and ``send`` with the body bounded to ``timeout`` seconds.

    Until the last body message has arrived, ``receive`` waits no longer than what is left
    of the deadline, then raises :class:`RequestTimeout`, which whichever handler is reading
    the body (the raw predict path, a Starlette endpoint) answers as a 408. That answer
    carries ``connection: close``: the rest of the body may still be on its way, so the
    connection cannot serve another request. Once the body is complete, ``receive`` is the
    server's own again (handlers wait on it for the disconnect).
    """

    __slots__ = ("_body_done", "_deadline", "_receive", "_send", "_timeout", "expired")

    def __init__(self, receive: Receive, send: Send, timeout: float) -> None:
        self._receive, self._send, self._timeout = receive, send, timeout
        self._deadline = asyncio.get_running_loop().time() + timeout
        self._body_done = False
        self.expired = False

    async def receive(self) -> Message:
        if self._body_done:
            return await self._receive()
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            self.expired = True
            raise RequestTimeout(
                f"the request body did not arrive within {self._timeout:g} s (server.body_timeout)"
            ) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._body_done = True
        return message

    async def send(self, message: Message) -> None:
        if self.expired and message["type"] == "http.response.start":
            message = {
                **message,
                "headers": [*message.get("headers", ()), (b"connection", b"close")],
            }
        await self._send(message)


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes with a 413."""
    length = header(scope, b"content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise InvalidInput("content-length: not a number") from None
        if declared > limit:
            raise PayloadTooLarge(
                f"request body of {declared} bytes exceeds the {limit}-byte limit"
            )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("client disconnected before sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def json_object(raw: bytes | memoryview) -> dict[str, Any]:
    """A request body that must be one JSON object (a 400 naming what it is otherwise)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput("expected a JSON object")
    return data


async def send_json(
    send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    out = [JSON_TYPE, (b"content-length", str(len(data)).encode())]
    if headers:
        out.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": data})


def error_body(exc: HybridServeError, request_id: str | None = None) -> dict[str, Any]:
    body = exc.to_dict()
    if request_id:
        body["request_id"] = request_id
    return body
