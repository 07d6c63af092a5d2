"""The router and its collaborators alone: a FakeRuntime, in-memory stores, no trained model.

Each test builds a one-route project whose model reads one request feature ``x`` and scores
``x / 10`` (so the answer says which model made it), installs fake models into the model
manager, and calls ``Router.predict`` directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from hybridserve.batching import MicroBatcher
from hybridserve.config import _Strict, project_from_dict
from hybridserve.observability.metrics import Metrics
from hybridserve.predictions.cache import L1Cache
from hybridserve.records import PredictionRecord, now
from hybridserve.routing import fallback
from hybridserve.routing.fallback import Context, build_chain
from hybridserve.routing.job import Answer, Entity, Job, Reason
from hybridserve.routing.models import LoadedModel, ModelManager
from hybridserve.routing.router import Router
from hybridserve.routing.schema import parse_predict_request
from hybridserve.runtimes.fake import FakeRuntime
from hybridserve.scoring import Scorer
from hybridserve.services import Services

ROUTE = "r"


def project(tmp_path: Path, **route: Any) -> Any:
    raw = {
        "name": "t",
        "registry": {"url": f"sqlite:///{tmp_path}/registry.db", "artifacts": str(tmp_path / "a")},
        "stores": {"online": "memory://"},
        "entities": {"card": {"key": "card_id"}},
        "routes": {
            ROUTE: {
                "model": "m@production",
                "entity": "card",
                "request_features": {"x": "float"},
                "max_staleness": "1h",
                "latency_budget": "200ms",
                **route,
            }
        },
    }
    return project_from_dict(raw, tmp_path)


Kit = Callable[..., Any]


@pytest.fixture
async def kit(tmp_path: Path) -> AsyncIterator[Kit]:
    opened: list[tuple[Services, Router]] = []

    async def make(
        handler: Callable[[Any], Any] = lambda m: m[:, 0] / 10,
        inline: bool = True,
        **route: Any,
    ) -> tuple[Router, dict[str, FakeRuntime]]:
        proj = project(tmp_path, **route)
        services = Services.open(proj)
        metrics = Metrics()
        models = ModelManager(services, metrics, poll_interval=0)
        runtimes: dict[str, FakeRuntime] = {}
        roles = {"primary": ("m", handler)}
        for i, step in enumerate(proj.route(ROUTE).fallback):
            if getattr(step, "model", None):
                roles[f"fallback{i}"] = ("rules", lambda m: m[:, 0] / 100)
        for role, (name, fn) in roles.items():
            rt = FakeRuntime(fn, features=["x"], name=name, version=1)
            runtimes[role] = rt
            scorer = Scorer(proj, ROUTE, rt)
            batcher = MicroBatcher(lambda m, rt=rt: rt.predict(m), name=f"{name}/1", inline=inline)
            models._install(ROUTE, role, LoadedModel(f"{name}@production", scorer, batcher))
        router = Router(services, models, metrics, L1Cache(1000))
        opened.append((services, router))
        return router, runtimes

    yield make
    for services, router in opened:
        await router.close()
        await services.close()


async def ask(router: Router, body: dict[str, Any]) -> Any:
    out = await router.predict(ROUTE, parse_predict_request(body))
    return out


async def test_compute_then_l1_then_store(kit: Kit) -> None:
    router, rts = await kit()
    got = await ask(router, {"entity": "a", "features": {"x": 3.0}})
    (p,) = got.body["predictions"]
    assert (got.status, p["source"], p["score"], p["model"]) == (200, "online", 0.3, "m")
    assert rts["primary"].calls[0].tolist() == [[3.0]]
    again = await ask(router, {"entity": "a"})
    assert again.body["predictions"][0]["source"] == "cache"
    await router.flush()
    router.cache.invalidate()
    stored = await ask(router, {"entity": "a"})
    assert stored.body["predictions"][0]["source"] == "online"  # the stored record's own
    assert len(rts["primary"].calls) == 1


async def test_a_failing_model_falls_back_in_the_declared_order(kit: Kit) -> None:
    def broken(m: Any) -> Any:
        raise RuntimeError("model crashed")

    router, _ = await kit(
        broken, fallback=["stale_prediction", {"model": "rules@production"}, {"default": 0.5}]
    )
    old = PredictionRecord("b", ROUTE, 0.9, "m", 1, "batch", now() - 7200, now())
    await router.services.predictions.put([old])
    got = await ask(router, {"entities": ["b", "c"], "features": {"x": 4.0}})
    b, c = got.body["predictions"]
    assert (b["source"], b["score"], b["degraded"]) == ("fallback:stale_prediction", 0.9, True)
    assert (c["source"], c["score"], c["model"]) == ("fallback:model", 0.04, "rules")
    counted = router.metrics.fallbacks
    assert counted.labels(ROUTE, "stale_prediction", "error").value == 1
    assert counted.labels(ROUTE, "model", "error").value == 1


async def test_nothing_can_answer_is_a_503_with_each_entitys_trail(kit: Kit) -> None:
    router, _ = await kit(fallback=["stale_prediction"])
    got = await ask(router, {"entity": "d", "mode": "stored"})
    assert got.status == 503
    (missing,) = got.body["unanswered"]
    assert missing["steps"] == ["l1: miss", "store: miss", "fallback stale_prediction: none stored"]


async def test_an_open_breaker_skips_its_step(kit: Kit) -> None:
    router, rts = await kit(fallback=[{"default": 0.25}])
    breaker = router.breaker("model:m/1")
    for _ in range(breaker.failures):
        breaker.failure()
    got = await ask(router, {"entity": "e", "mode": "compute", "features": {"x": 1.0}})
    (p,) = got.body["predictions"]
    assert (p["source"], p["score"]) == ("fallback:default", 0.25)
    assert rts["primary"].calls == []
    assert router.metrics.fallbacks.labels(ROUTE, "default", "breaker_open").value == 1


async def test_a_row_the_scorer_rejects_is_counted_as_invalid_features(kit: Kit) -> None:
    router, _ = await kit(fallback=[{"default": 0.0}])
    got = await ask(router, {"entity": "f", "mode": "compute"})  # no x: a missing feature
    assert got.body["predictions"][0]["source"] == "fallback:default"
    assert router.metrics.fallbacks.labels(ROUTE, "default", "invalid_features").value == 1


async def test_stage_timings_are_recorded_per_route(kit: Kit) -> None:
    router, _ = await kit()
    await ask(router, {"entity": "g", "features": {"x": 2.0}})
    stages = router.route_metrics[ROUTE]
    for stage in (stages.cache, stages.store, stages.model, stages.total):
        assert sum(stage.child.counts) == 1
    assert sum(stages.fallback.child.counts) == 0


class HalfOfPrimary(_Strict):
    """A test-only kind of fallback: half the score the stored record had."""

    half_of_stored: bool = True


class HalfStep:
    kind: ClassVar[str] = "half"
    needs_stored: ClassVar[bool] = True

    def __init__(self, cfg: HalfOfPrimary, index: int) -> None:
        pass

    async def run(self, ctx: Context, job: Job, todo: list[Entity]) -> None:
        for e in todo:
            if e.stale is None:
                e.note("fallback half", Reason.MISS, primary=False)
            else:
                answer = Answer.of(e.stale, "fallback:half", job.at, degraded=True)
                answer.score = e.stale.score / 2
                job.fell_back(e, answer, self.kind)


async def test_a_new_kind_of_fallback_is_one_class_and_one_table_line(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(fallback.STEPS, HalfOfPrimary, HalfStep)  # the one table line
    router, _ = await kit(fallback=[])
    router.chains[ROUTE] = build_chain([HalfOfPrimary(), *router.project.route(ROUTE).fallback])
    old = PredictionRecord("h", ROUTE, 0.8, "m", 1, "batch", now() - 7200, now())
    await router.services.predictions.put([old])
    got = await ask(router, {"entity": "h", "mode": "stored"})
    (p,) = got.body["predictions"]
    assert (p["source"], p["score"], p["degraded"]) == ("fallback:half", 0.4, True)
    assert router.metrics.fallbacks.labels(ROUTE, "half", "stale").value == 1


async def test_write_backs_are_batched_and_use_their_own_breaker(kit: Kit) -> None:
    router, _ = await kit()
    writes: list[int] = []
    real = router.services.predictions.put

    async def counting(records: Any) -> int:
        writes.append(len(records))
        return await real(records)

    router.services.predictions.put = counting  # type: ignore[method-assign]
    import asyncio

    await asyncio.gather(
        *(ask(router, {"entity": f"w{i}", "features": {"x": float(i)}}) for i in range(20))
    )
    await router.flush()
    assert sum(writes) == 20 and len(writes) < 20
    assert router.writes.breaker is router.breaker("prediction_store:write")
    assert np.isclose(
        [r.score for r in await router.services.predictions.get(ROUTE, ["w7"]) if r], [0.7]
    ).all()


async def test_staleness_bounds_per_source_and_the_request_only_tightens(kit: Kit) -> None:
    router, _ = await kit(
        max_staleness={"batch": "24h", "stream": "10m", "online": "10m"},
        fallback=[{"default": 0.0}],
    )
    two_hours = now() - 7200
    await router.services.predictions.put(
        [
            PredictionRecord("batch-card", ROUTE, 0.7, "m", 1, "batch", two_hours, now()),
            PredictionRecord("stream-card", ROUTE, 0.6, "m", 1, "stream", two_hours, now()),
        ]
    )
    got = await ask(router, {"entities": ["batch-card", "stream-card"], "mode": "stored"})
    batch, stream = got.body["predictions"]
    assert (batch["source"], batch["score"]) == ("batch", 0.7)  # within its 24 h
    assert stream["source"] == "fallback:default"  # two hours is past the stream's 10 m
    router.cache.invalidate()
    tighter = await ask(router, {"entity": "batch-card", "mode": "stored", "max_staleness": "1h"})
    assert tighter.body["predictions"][0]["source"] == "fallback:default"
    looser = await ask(router, {"entity": "stream-card", "mode": "stored", "max_staleness": "3h"})
    assert looser.body["predictions"][0]["source"] == "fallback:default"  # never loosens


async def test_a_request_that_waited_its_budget_for_the_loop_falls_back_at_once(
    kit: Kit,
) -> None:
    router, rts = await kit(fallback=[{"default": 0.5}])
    router.lag.start()
    router.lag.note(router.lag._clock(), 0.15)  # the loop runs 150 ms late: 50 ms are left
    got = await ask(router, {"entity": "a", "features": {"x": 3.0}})
    assert got.body["predictions"][0]["source"] == "online"  # the model answers in time
    router.lag.note(router.lag._clock(), 0.25)  # later than the 200 ms budget
    got = await ask(router, {"entity": "b", "features": {"x": 3.0}})
    (p,) = got.body["predictions"]
    assert (got.status, p["source"], p["degraded"]) == (200, "fallback:default", True)
    assert len(rts["primary"].calls) == 1  # no batch was built for an answer too late
    # A stored answer is still read when late: one read is cheap, and better than a default.
    await router.services.predictions.put(
        [PredictionRecord("c", ROUTE, 0.7, "m", 1, "batch", now() - 60, now())]
    )
    router.lag.note(router.lag._clock(), 0.25)
    got = await ask(router, {"entity": "c", "features": {"x": 3.0}})
    (p,) = got.body["predictions"]
    assert (p["source"], p["score"], p["degraded"]) == ("batch", 0.7, False)
    reason = router.metrics.fallbacks.labels(ROUTE, "default", "deadline").value
    assert reason == 1


async def test_a_stage_past_its_own_budget_is_cut_and_the_next_step_answers(kit: Kit) -> None:
    import asyncio

    router, _ = await kit(fallback=[{"default": 0.5}], budgets={"store": "20ms", "model": "150ms"})
    assert router.metrics.stage_budget.labels(ROUTE, "store")._value.get() == 0.02
    real_get = router.services.predictions.get

    async def slow_get(*args: Any, **kw: Any) -> Any:
        await asyncio.sleep(0.1)  # well within the 200 ms request budget, past the store's
        return await real_get(*args, **kw)

    router.services.predictions.get = slow_get  # type: ignore[method-assign]
    router.lag.explains = lambda *a: False  # type: ignore[method-assign]  # a quiet loop
    got = await ask(router, {"entity": "a", "features": {"x": 3.0}})
    (p,) = got.body["predictions"]
    assert p["source"] == "online"  # the store was cut at 20 ms, the model answered in time
    assert router.breakers("prediction_store")._consecutive == 1  # it counted a timeout

    got = await ask(router, {"entity": "b", "features": {"x": 3.0}, "mode": "stored"})
    (p,) = got.body["predictions"]
    assert p["source"] == "fallback:default"
    assert router.metrics.fallbacks.labels(ROUTE, "default", "timeout").value == 1


def test_a_stage_budget_must_fit_in_the_route_budget(tmp_path: Path) -> None:
    from hybridserve.errors import ConfigError

    with pytest.raises((ConfigError, ValueError), match=r"budgets\.model: 300 ms"):
        project(tmp_path, budgets={"model": "300ms"})


async def test_model_timeouts_of_calls_that_wait_do_not_open_its_breaker(kit: Kit) -> None:
    # A model in a thread whose calls take their time on the clock but almost no CPU: in a
    # server they wait for the interpreter's lock or for a core (a busy loop, a shared
    # machine). Such timeouts say the process is short of CPU, not that the model is broken.
    waits = [0.07] * 5 + [0.3] * 5  # the estimate learns 70 ms, then five calls time out

    def slow(m: Any) -> Any:
        time.sleep(waits.pop(0))
        return m[:, 0] / 10

    router, _ = await kit(slow, inline=False, latency_budget="100ms", fallback=[{"default": 0.5}])
    model = router.models.get(ROUTE)
    assert model is not None
    sources = []
    for n in range(10):
        got = await ask(router, {"entity": f"e{n}", "features": {"x": 1.0}})
        sources.append(got.body["predictions"][0]["source"])
        while model.batcher.queued or model.batcher._busy_since is not None:
            await asyncio.sleep(0.01)  # the model is idle again: the next one waits for it
    assert sources == ["online"] * 5 + ["fallback:default"] * 5
    assert router.breaker("model:m/1").state == "closed"
    assert router.metrics.fallbacks.labels(ROUTE, "default", "overload").value == 5
