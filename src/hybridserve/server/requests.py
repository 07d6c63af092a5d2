"""What every Starlette endpoint needs of a request: the process state, the auth check, and a
bounded JSON object body.

The endpoints (:mod:`.admin`, :mod:`.events`, :mod:`.v2`, :mod:`.docs`) all import these from
here, and this module imports only :mod:`.state` and :mod:`.auth`, so no endpoint depends on
another one.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from hybridserve.errors import InvalidInput
from hybridserve.server.auth import presented_key
from hybridserve.server.http import json_object
from hybridserve.server.state import ServerState


def state_of(request: Request) -> ServerState:
    return request.app.state.hs  # type: ignore[no-any-return]


def authorize(request: Request, scope: str) -> str:
    """The caller's name (its API key's name, or its address when auth is off)."""
    state = state_of(request)
    name = state.auth.check(
        presented_key(request.scope),
        scope,
    )
    client = request.client.host if request.client else "unknown"
    return name or f"anonymous@{client}"


async def json_body(request: Request, limit: int = 64 * 1024) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > limit:
        raise InvalidInput(f"body exceeds {limit} bytes")
    return json_object(raw) if raw else {}
