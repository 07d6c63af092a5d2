"""Small raw-ASGI helpers for the hot path: read a bounded body, send a built answer, and
the request-level rules every endpoint and front shares (the body limit and deadline, the
request id)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

from hybridserve.errors import InvalidInput, PayloadTooLarge, RequestTimeout
from hybridserve.records import new_request_id
from hybridserve.routing.schema import decode

T = TypeVar("T")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")


def request_id(raw: bytes | str | None) -> str:
    """The caller's ``X-Request-Id`` (up to 128 characters of it) when it is visible ASCII,
    else a new id: a header that could not be echoed or logged as sent (not ASCII, control
    characters) is ignored rather than failing the request. ``raw`` is the header as the
    front gives it: bytes from ASGI, text from RSGI."""
    if raw:
        text = raw[:128].decode("latin-1") if isinstance(raw, bytes) else raw[:128]
        if _REQUEST_ID.fullmatch(text):
            return text
    return new_request_id()


def body_timeout(timeout: float) -> RequestTimeout:
    return RequestTimeout(
        f"the request body did not arrive within {timeout:g} s (server.body_timeout)"
    )


def declared_length(raw: bytes | str | None, limit: int) -> int | None:
    """The body's ``Content-Length`` (``None`` when not given), refusing more than ``limit``
    bytes with a 413 before any of it is read."""
    if raw is None:
        return None
    try:
        declared = int(raw)
    except ValueError:
        raise InvalidInput("content-length: not a number") from None
    if declared > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    return declared


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body exceeds the {limit}-byte limit")


class ReadDeadlines:
    """Body reads bounded in time by one periodic check, not a timer each.

    ``asyncio.timeout`` around every body read costs a timer handle, a reschedule and a
    cancel per request, for a deadline that almost never fires (the body is there at once).
    Here a read only registers its task and deadline; a check every ``tick`` seconds, armed
    only while reads are out, cancels the reads past due, which :meth:`read` turns into the
    408's :class:`RequestTimeout`. A deadline fires up to ``tick`` late.
    """

    __slots__ = ("_expired", "_handle", "_loop", "_reads", "tick")

    def __init__(self, tick: float = 0.05) -> None:
        self.tick = tick
        self._reads: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def read(self, pending: Awaitable[T], due: float, timeout: float) -> T:
        """``await pending``, or :class:`RequestTimeout` once the loop's time passes ``due``."""
        task = asyncio.current_task()
        if task is None:  # not in a task (never the case under a server)
            return await pending
        self._reads[task] = due
        loop = task.get_loop()
        if self._handle is None or self._loop is not loop:  # armed on no loop, or a stopped one
            self._loop = loop
            self._handle = loop.call_later(self.tick, self._check)
        try:
            return await pending
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            self._expired.discard(task)
            task.uncancel()
            raise body_timeout(timeout) from None
        finally:
            self._reads.pop(task, None)

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a check left behind on a loop no longer used
            return
        now = loop.time()
        for task, due in list(self._reads.items()):
            if task.get_loop() is not loop:
                del self._reads[task]  # a read on a loop that is gone
            elif due <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        self._handle = loop.call_later(self.tick, self._check) if self._reads else None


class BodyDeadline:
    """A request's ``receive`` and ``send`` with the body bounded to ``timeout`` seconds.

    Until the last body message has arrived, ``receive`` waits no longer than what is left
    of the deadline, then raises :class:`RequestTimeout`, which whichever handler is reading
    the body (the raw predict path, a Starlette endpoint) answers as a 408. That answer
    carries ``connection: close``: the rest of the body may still be on its way, so the
    connection cannot serve another request. Once the body is complete, ``receive`` is the
    server's own again (handlers wait on it for the disconnect).
    """

    __slots__ = (
        "_body_done",
        "_deadline",
        "_deadlines",
        "_receive",
        "_send",
        "_timeout",
        "expired",
    )

    def __init__(
        self, receive: Receive, send: Send, timeout: float, deadlines: ReadDeadlines
    ) -> None:
        self._receive, self._send, self._timeout = receive, send, timeout
        self._deadlines = deadlines
        self._deadline = asyncio.get_running_loop().time() + timeout
        self._body_done = False
        self.expired = False

    async def receive(self) -> Message:
        if self._body_done:
            return await self._receive()
        try:
            message = await self._deadlines.read(self._receive(), self._deadline, self._timeout)
        except RequestTimeout:
            self.expired = True
            raise
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
    declared_length(header(scope, b"content-length"), limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("client disconnected before sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def json_object(raw: bytes | memoryview) -> dict[str, Any]:
    """A request body that must be one JSON object (a 400 naming what it is otherwise)."""
    data = decode(raw)
    if not isinstance(data, dict):
        raise InvalidInput("expected a JSON object")
    return data


async def send_reply(send: Send, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
    """An answer whose bytes and headers are built (:mod:`.predict`), sent over ASGI."""
    out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    out.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})
