"""JSON answers and errors, in one place, for every HTTP front and endpoint.

:func:`dumps` is the one JSON encoding of an answer (orjson, numpy arrays included);
:func:`json_response` wraps it for the Starlette endpoints, and the raw predict path (ASGI and
RSGI) sends its bytes directly. :func:`error_reply` is the one translation of an exception into
a status and a body, in the two shapes the server speaks: the hybrid API's
``{"error", "type", "details"?, "request_id"?}`` and the Open Inference Protocol's
``{"error": message}``. The Starlette exception handlers, the OIP endpoints and the predict
path all call it, so an error reads the same whichever way it was served.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from hybridserve.errors import HybridServeError

log = logging.getLogger("hybridserve.server")

Shape = Literal["hybrid", "v2"]
JSON = "application/json"


def dumps(body: Any) -> bytes:
    """The JSON bytes of an answer (numpy arrays and scalars encoded as JSON numbers)."""
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status, headers=headers, media_type=JSON)


def error_reply(
    exc: BaseException, request_id: str | None = None, shape: Shape = "hybrid"
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, body, headers)`` for an exception raised while serving a request.

    A :class:`HybridServeError` keeps its status and message; Starlette's ``HTTPException``
    (a 404 for an unknown path, a 405) its status, detail and headers; anything else is a 500
    ``internal error``, logged here with its traceback (its message may name internals).
    """
    headers: dict[str, str] = {}
    if isinstance(exc, HybridServeError):
        status = exc.status
        body = exc.to_dict() if shape == "hybrid" else {"error": exc.message}
    elif isinstance(exc, HTTPException):
        status, body = exc.status_code, {"error": exc.detail}
        headers = dict(exc.headers or {})
    else:
        log.error("request %s failed", request_id or "-", exc_info=exc)
        status, body = 500, {"error": "internal error"}
    if request_id and shape == "hybrid":
        body["request_id"] = request_id
    if status == 503:
        # Nothing could answer in time: say when to ask again, rather than let clients retry
        # at once into the same overload or outage.
        headers.setdefault("retry-after", "1")
    return status, body, headers


async def _handle(_request: Request, exc: Exception) -> Response:
    status, body, headers = error_reply(exc)
    return json_response(status, body, headers)


def exception_handlers() -> dict[Any, Any]:
    return {Exception: _handle, HTTPException: _handle, HybridServeError: _handle}


Handler = Callable[[Request], Awaitable[Response]]


def protocol_errors(handler: Handler) -> Handler:
    """An Open Inference Protocol endpoint: its errors answered as ``{"error": message}``."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except HybridServeError as exc:
            status, body, headers = error_reply(exc, shape="v2")
            return json_response(status, body, headers)

    return wrapper
