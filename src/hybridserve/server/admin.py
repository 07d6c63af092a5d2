"""Admin endpoints (``/v1/admin/...``) and metrics.

Admin calls need the ``admin`` scope; alias moves and reloads are written to the registry's
audit log with the API key's name as the actor.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hybridserve.routing.schema import PromoteRequest, RollbackRequest, parse
from hybridserve.server.errors import json_response
from hybridserve.server.requests import authorize, json_body, state_of

_PROMOTE = TypeAdapter(PromoteRequest)
_ROLLBACK = TypeAdapter(RollbackRequest)


async def list_routes(request: Request) -> Response:
    authorize(request, "admin")
    state = state_of(request)
    out = {}
    for name, cfg in state.project.routes.items():
        out[name] = {
            "entity": cfg.entity,
            "max_staleness_s": (
                cfg.max_staleness
                if isinstance(cfg.max_staleness, float)
                else cfg.max_staleness.model_dump()
            ),
            "latency_budget_ms": cfg.latency_budget * 1000,
            "models": {role: m.label for (r, role, m) in state.models.loaded() if r == name},
            "fallback": [s.model_dump() for s in cfg.fallback],
        }
    breakers = state.router.breakers.states()
    return json_response(200, {"routes": out, "breakers": breakers})


async def list_models(request: Request) -> Response:
    authorize(request, "admin")
    registry = state_of(request).services.registry

    def collect() -> list[dict[str, Any]]:
        return [
            {
                "name": n,
                "versions": [v.version for v in registry.versions(n)],
                "aliases": registry.aliases(n),
            }
            for n in registry.list_models()
        ]

    return json_response(200, {"models": await asyncio.to_thread(collect)})


async def promote(request: Request) -> Response:
    actor = authorize(request, "admin")
    state = state_of(request)
    name = request.path_params["name"]
    body = parse(_PROMOTE, await json_body(request))
    version, alias = body.version, body.alias
    await asyncio.to_thread(
        state.services.registry.promote, name, version, alias=alias, actor=actor
    )
    changes = await state.models.refresh()
    return json_response(
        200, {"model": name, "alias": alias, "version": version, "changes": changes}
    )


async def rollback(request: Request) -> Response:
    actor = authorize(request, "admin")
    state = state_of(request)
    name = request.path_params["name"]
    alias = parse(_ROLLBACK, await json_body(request)).alias
    version = await asyncio.to_thread(
        state.services.registry.rollback, name, alias=alias, actor=actor
    )
    changes = await state.models.refresh()
    return json_response(
        200, {"model": name, "alias": alias, "version": version, "changes": changes}
    )


async def reload(request: Request) -> Response:
    actor = authorize(request, "admin")
    state = state_of(request)
    changes = await state.models.refresh()
    await asyncio.to_thread(
        state.services.registry.record_action, "reload", actor=actor, details={"changes": changes}
    )
    return json_response(200, {"changes": changes})


async def metrics(request: Request) -> Response:
    return Response(
        state_of(request).metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


def routes() -> list[Route]:
    return [
        Route("/v1/admin/routes", list_routes),
        Route("/v1/admin/models", list_models),
        Route("/v1/admin/models/{name}/promote", promote, methods=["POST"]),
        Route("/v1/admin/models/{name}/rollback", rollback, methods=["POST"]),
        Route("/v1/admin/reload", reload, methods=["POST"]),
        Route("/metrics", metrics),
    ]
