"""Health through a Redis outage under load, on a real server and a real Redis.

The feature store and the prediction store each reach Redis through a TCP proxy the test
controls, so "Redis stops" is a proxy closing its listener and every connection, without
touching the Redis server other suites share. Healthy, then the feature store's Redis stops
(stored answers and the stale-prediction fallback still answer: degraded), then the
prediction store's too (nothing can answer: critical, not ready), then both come back
(healthy); ``/v1/health`` and ``hybridserve status`` name the reasons at each step.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from typer.testing import CliRunner

from backends import redis_url
from conftest_server import without
from hybridserve.cli import app
from hybridserve.config import Project
from hybridserve.features.materialize import materialize
from hybridserve.services import Services
from tcp_proxy import TcpProxy, release_leaked_redis_pipelines

MakeProject = Callable[..., Project]
CARDS = [f"card_{i:06d}" for i in range(60)]
pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own on the shared Redis; its keys are deleted afterwards."""
    import redis.asyncio as redis_asyncio

    url = redis_url()
    prefix = f"hstest:{uuid.uuid4().hex}:"
    yield prefix
    client = redis_asyncio.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def release_leaked_pipelines() -> Iterator[None]:
    yield
    release_leaked_redis_pipelines()


async def load(base: str, stop: asyncio.Event, statuses: list[int]) -> None:
    rng = random.Random(3)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            mode = "compute" if rng.random() < 0.5 else "auto"
            r = await client.post(
                "/v1/predict/fraud", json={"entity": rng.choice(CARDS), "mode": mode}
            )
            statuses.append(r.status_code)
            await asyncio.sleep(0.005)

    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(6)))


async def wait_for(
    client: httpx.AsyncClient, status: str, *reasons: str, timeout: float = 15
) -> dict[str, Any]:
    """The health body once it has ``status`` and route reasons containing each of ``reasons``."""
    deadline = time.monotonic() + timeout
    while True:
        body = (await client.get("/v1/health")).json()
        have = route_reasons(body)
        if body["status"] == status and all(any(r in h for h in have) for r in reasons):
            return body  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"still {body['status']}: {body['reasons']}"
        await asyncio.sleep(0.2)


def status_cli(project: Project) -> tuple[int, dict[str, Any]]:
    """``hybridserve status --json`` (in this process: a subprocess would spend seconds on
    imports; the command is the same). Run it in a thread: it has its own event loop."""
    done = CliRunner().invoke(app, ["status", "--json", "-p", str(project.base_dir)])
    return done.exit_code, json.loads(done.stdout)


async def cli_reaches(
    project: Project, status: str, timeout: float = 15
) -> tuple[int, dict[str, Any]]:
    """``hybridserve status --json`` once it says ``status`` (the store's published figures
    follow the server's by up to a publish interval, and an answer degraded in that gap can
    hold the window a moment longer)."""
    deadline = time.monotonic() + timeout
    while True:
        code, body = await asyncio.to_thread(status_cli, project)
        if body["status"] == status:
            return code, body
        assert time.monotonic() < deadline, f"status still {body['status']}: {body['reasons']}"
        await asyncio.sleep(0.2)


def route_reasons(body: dict[str, Any]) -> list[str]:
    route = next(c for c in body["components"] if c["name"] == "route:fraud")
    return route["reasons"]  # type: ignore[no-any-return]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # leaked pipelines
async def test_health_moves_through_a_redis_outage_and_back(
    release_leaked_pipelines: None,
    make_project: MakeProject,
    live_server: Callable[..., str],
    prefix: str,
) -> None:
    parts = urlsplit(redis_url())
    features, predictions = (TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
                             for _ in range(2))  # fmt: skip
    await features.start()
    await predictions.start()

    def via(proxy: TcpProxy) -> str:
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}"))

    project = without(make_project(
        {
            "stores": {"online": via(features), "predictions": via(predictions), "prefix": prefix},
            "server": {"breaker": {"cooldown": "0.3s"}, "reload_interval": 0, "l1_cache_size": 0},
            "health": {"window": "2s", "min_answers": 5, "publish_interval": "0.3s"},
        },
        latency_budget="2s",
        fallback=["stale_prediction"],
    ), "streams", "batch_jobs")  # fmt: skip
    services = Services.open(project)
    try:
        await materialize(project, services.features, "card_profile")
    finally:
        await services.close()

    base = await asyncio.to_thread(live_server, project)
    statuses: list[int] = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        for card in CARDS:  # every card computed once, so it is stored
            r = await client.post("/v1/predict/fraud", json={"entity": card, "mode": "compute"})
            assert r.status_code == 200
        traffic = asyncio.ensure_future(load(base, stop, statuses))
        try:
            body = await wait_for(client, "healthy")
            assert body["reasons"] == []

            await features.stop()  # the feature store's Redis is gone
            body = await wait_for(client, "degraded", "degraded or unanswered")
            reasons = route_reasons(body)
            assert any(r.startswith("feature_store unreachable") for r in reasons), reasons
            assert any("degraded or unanswered" in r for r in reasons), reasons
            code, cli = await cli_reaches(project, "degraded")
            assert code == 0, cli
            assert any(r.startswith("feature_store unreachable") for r in route_reasons(cli))
            assert (await client.get("/v2/health/ready")).status_code == 200

            await predictions.stop()  # and now the prediction store's: nothing can answer
            body = await wait_for(client, "critical", "unanswered (503")
            reasons = route_reasons(body)
            assert any(r.startswith("no step can answer") for r in reasons), reasons
            assert any("prediction_store unreachable" in r for r in reasons), reasons
            assert any(r.endswith("unanswered (503, above 50.0%)") for r in reasons), reasons
            r = await client.get("/v2/health/ready")
            assert (r.status_code, r.json()) == (503, {"ready": False})
            code, cli = await cli_reaches(project, "critical")
            assert code == 1, cli
            assert any(r.startswith("no step can answer") for r in route_reasons(cli))

            await features.start()
            await predictions.start()
            body = await wait_for(client, "healthy")
            assert body["reasons"] == []
            assert (await client.get("/v2/health/ready")).status_code == 200
            code, cli = await cli_reaches(project, "healthy")
            assert (code, cli["processes"]) == (0, 1), cli
            done = await asyncio.to_thread(
                CliRunner().invoke, app, ["status", "--url", base, "--json"]
            )
            assert json.loads(done.stdout)["status"] == "healthy", done.stdout
        finally:
            stop.set()
            await traffic
            await features.stop()
            await predictions.stop()
    assert 503 in statuses and 200 in statuses
