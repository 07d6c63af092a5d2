"""Errors to HTTP responses, in one place, for the Starlette part of the server."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from hybridserve.errors import HybridServeError

log = logging.getLogger("hybridserve.server")


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status,
        headers=headers,
        media_type="application/json",
    )


async def _hybrid(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HybridServeError)
    return json_response(exc.status, exc.to_dict())


async def _http(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return json_response(exc.status_code, {"error": exc.detail}, dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return json_response(500, {"error": "internal error"})


def exception_handlers() -> dict[Any, Any]:
    return {HybridServeError: _hybrid, HTTPException: _http, Exception: _unexpected}
