"""SLO reports from the store: a known mix of good and degraded answers gives the exact
compliance and budget left, in ``GET /v1/slo`` and ``hybridserve slo report``, and the figures
survive a restart of the server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import hybridserve
from hybridserve.config import Project
from hybridserve.errors import InvalidInput
from hybridserve.operations.slo import prometheus_report, slo_routes
from hybridserve.server.app import create_app

MakeProject = Callable[..., Project]
Serve = Callable[..., Any]
SOURCE_ROOT = str(Path(hybridserve.__file__).resolve().parents[1])
SLO = {"availability": "80%", "latency": {"p99": "2.5s"}, "window": "1h"}


def hs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hybridserve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "PYTHONPATH": SOURCE_ROOT},
    )


async def traffic(client: httpx.AsyncClient, good: int, degraded: int, offset: int = 0) -> int:
    """``good`` computed answers, then ``degraded`` stored-only ones that fall to the default;
    returns how many took at most 2.5 s as the client saw them (the server's time is less)."""
    fast = 0
    for i in range(good + degraded):
        if i < good:
            body, source = {"entity": f"card_{offset + i:06d}", "mode": "compute"}, "online"
        else:
            body = {"entity": f"card_{300 + offset + i:06d}", "mode": "stored"}
            source = "fallback:default"
        started = time.perf_counter()
        r = await client.post("/v1/predict/fraud", json=body)
        fast += time.perf_counter() - started <= 2.5
        assert r.json()["predictions"][0]["source"] == source
    return fast


def _availability(report: dict[str, Any]) -> dict[str, Any]:
    return report["routes"]["fraud"]["objectives"]["availability"]  # type: ignore[no-any-return]


@pytest.mark.slow
async def test_known_mix_gives_exact_compliance_and_budget_and_survives_a_restart(
    make_project: MakeProject, serve: Serve
) -> None:
    # A budget a busy machine meets: every answer counted here is the one the test expects.
    project = make_project(fallback=[{"default": 0.0}], slo=SLO, latency_budget="2s")
    app = create_app(project, access_log=False)
    lifespan = app.starlette.router.lifespan_context(app.starlette)
    await lifespan.__aenter__()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hs") as c:
        fast = await traffic(c, good=45, degraded=5)
        report = (await c.get("/v1/slo")).json()
    await lifespan.__aexit__(None, None, None)  # the server stops; its counters stay stored

    a = _availability(report)
    assert (a["good"], a["total"], a["target"]) == (45, 50, 0.8)
    assert a["actual"] == 0.9
    assert a["compliant"] is True
    assert a["budget_left"] == pytest.approx(0.5)  # 10% bad of the 20% allowed
    assert a["burn_rate"]["5m"] == pytest.approx(0.5)
    latency = report["routes"]["fraud"]["objectives"]["latency"]
    assert (latency["total"], latency["target"]) == (50, 0.99)
    assert fast <= latency["good"] <= 50
    if fast == 50:  # on a machine so busy that a request took 2.5 s, the count is not known
        assert latency["good"] == 50
    cost = report["routes"]["fraud"]["cost"]
    assert cost["sources"]["online"]["answers"] == 45
    assert cost["sources"]["fallback:default"]["answers"] == 5
    assert cost["all"]["cpu_seconds"] > 0 and cost["all"]["per_1k"] > 0

    # The CLI reads the same counters from the store, with no server running.
    cli = hs("slo", "report", "fraud", "--json", "-p", str(project.base_dir))
    assert cli.returncode == 0, cli.stderr
    assert _availability(json.loads(cli.stdout))["good"] == 45
    text = hs("slo", "report", "-p", str(project.base_dir))
    assert "90.0000%" in text.stdout and "50.00%" in text.stdout, text.stdout

    # Restart: a new server adds to the stored figures.
    _, client2 = await serve(project)
    assert _availability((await client2.get("/v1/slo")).json())["total"] == 50
    await traffic(client2, good=0, degraded=10, offset=50)
    a = _availability((await client2.get("/v1/slo?window=1h")).json())
    assert (a["good"], a["total"], a["actual"]) == (45, 60, 0.75)
    assert a["compliant"] is False
    assert a["budget_left"] == pytest.approx(1 - 0.25 / 0.2)  # overspent: negative


def test_a_route_without_an_slo_is_a_clear_error(make_project: MakeProject) -> None:
    project = make_project()
    assert slo_routes(project, None) == {}
    with pytest.raises(InvalidInput, match=r"route 'fraud' declares no slo \(routes.fraud.slo\)"):
        slo_routes(project, "fraud")


async def test_the_report_from_prometheus_queries_each_window(make_project: MakeProject) -> None:
    project = make_project(slo=SLO)
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/query"
        query = request.url.params["query"]
        asked.append(query)
        value = 5 if query.startswith("(") else 100  # bad events, else all events
        return httpx.Response(
            200, json={"status": "success",
                       "data": {"resultType": "vector", "result": [{"value": [0, str(value)]}]}},
        )  # fmt: skip

    report = await prometheus_report(
        project, "http://prom:9090", "fraud", "24h", transport=httpx.MockTransport(answer)
    )
    assert report["source"] == "prometheus"
    a = _availability(report)
    assert (a["good"], a["total"], a["actual"]) == (95, 100, 0.95)
    assert a["budget_left"] == pytest.approx(1 - 0.05 / 0.2)
    assert a["burn_rate"] == {"5m": 0.25, "1h": 0.25, "6h": 0.25}
    assert report["routes"]["fraud"]["window_s"] == 86400
    windows = {w for q in asked for w in ("[86400s]", "[300s]", "[3600s]", "[21600s]") if w in q}
    assert windows == {"[86400s]", "[300s]", "[3600s]", "[21600s]"}
    assert all('route="fraud"' in q for q in asked)
    assert any('le="2.5"' in q for q in asked)  # the latency SLI, at its p99 target's bucket
