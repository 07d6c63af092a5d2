"""The prediction log: every sampled answer kept under load, drops counted (never a wait)
when the writer is stopped or behind, Parquet rotation and reads, sampling per source."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import orjson

from hybridserve.batching import MicroBatcher
from hybridserve.config import project_from_dict
from hybridserve.observability.metrics import Metrics
from hybridserve.predictions.cache import L1Cache
from hybridserve.quality.log import PredictionLog, row
from hybridserve.quality.sinks import MemorySink, ParquetSink
from hybridserve.records import now
from hybridserve.routing.models import LoadedModel, ModelManager
from hybridserve.routing.router import Router
from hybridserve.routing.schema import parse_predict_request
from hybridserve.runtimes.fake import FakeRuntime
from hybridserve.scoring import Scorer
from hybridserve.services import Services

ROUTE = "r"


def make_project(tmp_path: Path, log: dict[str, Any], **top: Any) -> Any:
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
                "latency_budget": "30s",
                "log": log,
            }
        },
        **top,
    }
    return project_from_dict(raw, tmp_path)


def make_router(proj: Any, plog: PredictionLog) -> tuple[Services, Router, Metrics]:
    services = Services.open(proj)
    services.prediction_log = plog
    metrics = Metrics()
    plog.on_count = lambda r, o, n: metrics.prediction_log.labels(r, o).inc(n)
    models = ModelManager(services, metrics, poll_interval=0)
    rt = FakeRuntime(lambda m: m[:, 0] / 10, features=["x"], name="m", version=1)
    batcher = MicroBatcher(rt.predict, name="m/1", inline=True)
    models._install(ROUTE, "primary", LoadedModel("m@production", Scorer(proj, ROUTE, rt), batcher))
    return services, Router(services, models, metrics, L1Cache(0)), metrics


async def load(router: Router, n: int, wave: int = 200) -> list[int]:
    """``n`` requests, ``wave`` at a time in flight; the status of each."""

    async def one(i: int) -> int:
        body = {"entity": f"e{i}", "features": {"x": float(i % 10)}, "mode": "compute"}
        out = await router.predict(ROUTE, parse_predict_request(body))
        assert out.status == 200, out.body
        return out.status

    statuses: list[int] = []
    for start in range(0, n, wave):
        statuses += await asyncio.gather(*(one(i) for i in range(start, min(n, start + wave))))
    return statuses


async def test_every_sampled_answer_is_kept_under_load(tmp_path: Path) -> None:
    proj = make_project(tmp_path, {"online": 1.0}, prediction_log={"queue": 50_000})
    sink = MemorySink()
    plog = PredictionLog(proj, sink)
    services, router, metrics = make_router(proj, plog)
    plog.start()
    try:
        statuses = await load(router, 2000)
        assert statuses == [200] * 2000
        assert plog.flush()
        rows = sink.read("predictions", ROUTE)
        assert len(rows) == 2000 and plog.count("written") == 2000 and plog.count("dropped") == 0
        assert {r["entity"] for r in rows} == {f"e{i}" for i in range(2000)}
        first = next(r for r in rows if r["entity"] == "e3")
        assert first["source"] == "online" and first["model"] == "m" and first["model_version"] == 1
        assert abs(first["score"] - 0.3) < 1e-9 and first["request_id"]
        assert orjson.loads(first["features"]) == {"x": 3.0}
        assert first["latency_ms"] >= 0 and first["degraded"] is False
        assert 'outcome="written",route="r"} 2000.0' in metrics.render().decode()
    finally:
        await router.close()
        await services.close()


class StuckSink(MemorySink):
    """A sink whose writes hang until released: a writer that has fallen behind."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def append(self, kind: Any, route: str, rows: Any) -> None:
        self.release.wait(30)
        super().append(kind, route, rows)


async def test_a_stopped_writer_costs_log_rows_not_answers(tmp_path: Path) -> None:
    proj = make_project(tmp_path, {"online": 1.0}, prediction_log={"queue": 100})
    plog = PredictionLog(proj, MemorySink())  # its writer never started
    services, router, metrics = make_router(proj, plog)
    try:
        statuses = await load(router, 500)
        assert statuses == [200] * 500  # every answer completed
        assert plog.count("dropped") == 400  # the queue held 100, the rest were dropped
        assert 'outcome="dropped",route="r"} 400.0' in metrics.render().decode()
    finally:
        await router.close()
        await services.close()


async def test_a_stuck_sink_drops_counted_and_later_rows_are_written(tmp_path: Path) -> None:
    proj = make_project(tmp_path, {"online": 1.0}, prediction_log={"queue": 50, "batch_rows": 10})
    sink = StuckSink()
    plog = PredictionLog(proj, sink)
    services, router, _ = make_router(proj, plog)
    plog.start()
    try:
        statuses = await load(router, 300)
        assert statuses == [200] * 300
        dropped = plog.count("dropped")
        assert dropped >= 300 - 50 - 10  # at most the queue and one batch in the writer's hands
        sink.release.set()
        assert plog.flush()
        assert plog.count("written") + dropped == 300
        assert len(sink.read("predictions", ROUTE)) == plog.count("written")
    finally:
        sink.release.set()
        await router.close()
        await services.close()


async def test_sampling_off_logs_nothing_and_keeps_the_router_check_false(tmp_path: Path) -> None:
    proj = make_project(tmp_path, {"batch": 1.0})
    plog = PredictionLog(proj, MemorySink())
    assert (plog.online, plog.stream, plog.batch) == (False, False, True)
    services, router, _ = make_router(proj, plog)
    try:
        await load(router, 20)
        assert plog.counts == {}
    finally:
        await router.close()
        await services.close()


def test_sampling_rate_is_a_share_and_fingerprints_replace_values(tmp_path: Path) -> None:
    proj = make_project(tmp_path, {"online": 0.25, "features": "fingerprint"})
    plog = PredictionLog(proj, MemorySink())
    drawn = sum(plog.sampled(ROUTE, "online") for _ in range(20_000))
    assert 4300 < drawn < 5700
    assert not plog.sampled(ROUTE, "batch") and not plog.sampled("other", "online")
    r = row(
        ts=1.0,
        route=ROUTE,
        source="online",
        entity="a",
        model="m",
        model_version=1,
        score=0.5,
        features={"x": 1.0},
        keep=plog.keep(ROUTE),
    )
    again = row(
        ts=2.0,
        route=ROUTE,
        source="online",
        entity="b",
        model="m",
        model_version=1,
        score=0.5,
        features={"x": 1.0},
        keep=plog.keep(ROUTE),
    )
    assert r["features"] is None and r["fingerprint"] == again["fingerprint"]
    assert len(r["fingerprint"]) == 16


def test_parquet_files_rotate_are_read_by_range_and_expire(tmp_path: Path) -> None:
    proj = make_project(
        tmp_path, {"online": 1.0}, prediction_log={"rotate_rows": 3, "retention": "1d"}
    )
    sink = ParquetSink(tmp_path / "log", proj.prediction_log)
    t = now()

    def rows(start: int, n: int) -> list[dict[str, Any]]:
        return [
            row(
                ts=t + i,
                route=ROUTE,
                source="online",
                entity=f"e{i}",
                model="m",
                model_version=1,
                score=i / 10,
            )
            for i in range(start, start + n)
        ]

    sink.append("predictions", ROUTE, rows(0, 2))
    assert sink.read("predictions", ROUTE) == []  # the open file is not readable yet
    sink.append("predictions", ROUTE, rows(2, 2))  # 4 rows >= 3: rotated
    assert [r["entity"] for r in sink.read("predictions", ROUTE)] == ["e0", "e1", "e2", "e3"]
    sink.append("predictions", ROUTE, rows(4, 1))
    sink.flush()
    files = sorted((tmp_path / "log" / "predictions" / ROUTE).glob("*.parquet"))
    assert len(files) == 2
    assert [r["entity"] for r in sink.read("predictions", ROUTE, since=t + 3.5)] == ["e4"]
    assert [r["entity"] for r in sink.read("predictions", ROUTE, until=t + 1)] == ["e0", "e1"]
    old = [
        row(
            ts=t - 3 * 86400,
            route=ROUTE,
            source="online",
            entity="old",
            model="m",
            model_version=1,
            score=0.0,
        )
    ]
    sink.append("predictions", ROUTE, old)
    sink.flush()  # closing a file deletes the ones past retention: the old row's own
    assert "old" not in {r["entity"] for r in sink.read("predictions", ROUTE)}
    assert sink.claim(ROUTE, ["a", "b"]) == [True, True]
    assert sink.claim(ROUTE, ["b", "c"]) == [False, True]
