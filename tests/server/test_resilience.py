"""Serving through dependency failures: a Redis outage under load, and a failing model.

The outage test runs a real server against real Redis through a TCP proxy the test controls,
so "Redis goes down" is the proxy closing its listener and every connection, without touching
the Redis server other suites share.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from backends import redis_url
from hybridserve.config import Project
from hybridserve.features.materialize import materialize
from hybridserve.runtimes.base import Prediction
from hybridserve.scoring import Matrix
from hybridserve.services import Services
from model_fakes import swap_predict
from tcp_proxy import TcpProxy, release_leaked_redis_pipelines

Serve = Callable[[Project], Any]
MakeProject = Callable[..., Project]
CARDS = [f"card_{i:06d}" for i in range(400)]


@dataclass
class Answer:
    started: float
    ended: float
    mode: str
    status: int
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def predictions(self) -> list[dict[str, Any]]:
        return self.body.get("predictions", [])  # type: ignore[no-any-return]


async def load(base_url: str, stop: asyncio.Event, log: list[Answer], workers: int = 20) -> None:
    """``workers`` concurrent clients: hot (often cached) and cold cards, some ``compute``."""
    rng = random.Random(7)
    hot = CARDS[:30]

    async def worker(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            card = rng.choice(hot) if rng.random() < 0.5 else rng.choice(CARDS)
            mode = "compute" if rng.random() < 0.3 else "auto"
            t = time.monotonic()
            r = await client.post("/v1/predict/fraud", json={"entity": card, "mode": mode})
            body = r.json() if r.headers.get("content-type") == "application/json" else {}
            log.append(Answer(t, time.monotonic(), mode, r.status_code, body))

    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        await asyncio.gather(*(worker(client) for _ in range(workers)))


@pytest.fixture
async def redis_prefix() -> AsyncIterator[tuple[str, str]]:
    """(Redis URL, a key prefix of this test's own); the keys are deleted afterwards."""
    import redis.asyncio as redis_asyncio

    url = redis_url()
    prefix = f"hstest:{uuid.uuid4().hex}:"
    yield url, prefix
    client = redis_asyncio.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
        assert not [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
    finally:
        await client.aclose()


@pytest.fixture
def release_leaked_pipelines() -> Iterator[None]:
    """Request before ``live_server``: runs when the server has stopped."""
    yield
    release_leaked_redis_pipelines()


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the same leak
async def test_redis_outage_degrades_then_recovers_without_5xx(
    release_leaked_pipelines: None,
    make_project: MakeProject,
    live_server: Callable[[Project], str],
    redis_prefix: tuple[str, str],
) -> None:
    url, prefix = redis_prefix
    parts = urlsplit(url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    proxied = urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}"))
    project = make_project(
        {
            "stores": {"online": proxied, "prefix": prefix},
            "server": {"breaker": {"cooldown": "0.5s"}, "reload_interval": 0},
        },
        latency_budget="1s",
        fallback=["stale_prediction", {"model": "fraud_rules@production"}, {"default": 0.0}],
    )
    services = Services.open(project)
    try:
        result = await materialize(project, services.features, "card_profile")
    finally:
        await services.close()
    assert result.entities == len(CARDS)

    # The server runs in its own thread and loop; load and proxy run on this loop.
    base = await asyncio.to_thread(live_server, project)
    log: list[Answer] = []
    stop = asyncio.Event()
    traffic = asyncio.ensure_future(load(base, stop, log))
    try:
        await asyncio.sleep(1.0)
        down_at = time.monotonic()
        await proxy.stop()
        await asyncio.sleep(1.5)
        up_at = time.monotonic()
        await proxy.start()
        # Recovered: a whole second of healthy answers, within 5 s of Redis coming back.
        recovered_at = None
        while time.monotonic() < up_at + 5:
            await asyncio.sleep(0.25)
            recent = [a for a in log if a.started > time.monotonic() - 0.5]
            if recent and all(_healthy(a) for a in recent):
                recovered_at = recovered_at or time.monotonic()
                if time.monotonic() - recovered_at >= 1.0:
                    break
            else:
                recovered_at = None
    finally:
        stop.set()
        await traffic
        await proxy.stop()

    assert len(log) > 200, f"only {len(log)} requests"
    assert [a for a in log if a.status >= 500] == []
    assert all(a.status == 200 for a in log), {a.status for a in log}
    before = [a for a in log if a.ended < down_at]
    during = [a for a in log if a.started > down_at + 0.05 and a.ended < up_at]
    assert before and during
    assert all(_healthy(a) for a in before), [a.predictions for a in before if not _healthy(a)]
    # During the outage only the L1 cache (fresh, not degraded) and fallbacks answer.
    sources: dict[str, int] = {}
    for a in during:
        (p,) = a.predictions
        sources[p["source"]] = sources.get(p["source"], 0) + 1
        if p["source"] == "cache":
            assert a.mode == "auto" and not p["degraded"]
        else:
            assert p["source"].startswith("fallback:") and p["degraded"], p
    assert sources.get("fallback:default", 0) > 0, sources
    assert sources.get("fallback:stale_prediction", 0) > 0, sources  # compute mode, cached card
    assert "online" not in sources
    assert recovered_at is not None, "answers did not recover after Redis came back"
    assert proxy.connections > 0


def _healthy(a: Answer) -> bool:
    return a.status == 200 and all(
        p["source"] in ("online", "cache") and not p["degraded"] for p in a.predictions
    )


# -- a model that raises -----------------------------------------------------------------


async def test_model_that_raises_falls_back_instead_of_500(
    make_project: MakeProject, serve: Serve
) -> None:
    app, client = await serve(make_project(fallback=[{"default": 0.25}]))
    model = app.state.models.get("fraud")
    assert model is not None

    def broken(matrix: Matrix) -> Prediction:
        raise ValueError("Input contains NaN")

    swap_predict(model.batcher, lambda _: broken)
    r = await client.post("/v1/predict/fraud", json={"entity": "card_000001", "mode": "compute"})
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    assert (p["source"], p["score"], p["degraded"]) == ("fallback:default", 0.25, True)
    assert app.state.router.breaker("model:fraud/1")._consecutive == 1
