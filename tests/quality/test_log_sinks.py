"""One contract for every prediction-log sink: memory, Parquet files, a Redis stream."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends import redis_url
from hybridserve.config import PredictionLogConfig
from hybridserve.quality.log import row
from hybridserve.quality.sinks import MemorySink, ParquetSink, RedisSink, Sink
from hybridserve.records import now


@pytest.fixture(params=["memory", "parquet", pytest.param("redis", marks=pytest.mark.redis)])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sink]:
    cfg = PredictionLogConfig(maxlen=1000, rotate_rows=1)
    if request.param == "memory":
        yield MemorySink()
    elif request.param == "parquet":
        yield ParquetSink(tmp_path, cfg)
    else:
        s = RedisSink(redis_url(), f"hs_test_{uuid.uuid4().hex[:8]}:", cfg)
        try:
            yield s
        finally:
            keys = list(s.client.scan_iter(match=f"{s.prefix}*"))
            if keys:
                s.client.delete(*keys)
            s.close()


def answers(t: float, n: int, route: str = "r") -> list[dict[str, Any]]:
    return [
        row(
            ts=t + i,
            route=route,
            source="online",
            entity=f"e{i}",
            model="m",
            model_version=2,
            score=i / 10,
            request_id=f"q{i}",
            features={"x": float(i), "c": None},
            degraded=i == 1,
            latency_ms=0.5,
        )
        for i in range(n)
    ]


def test_rows_come_back_in_time_order_and_by_range(sink: Sink) -> None:
    t = now() - 100
    rows = answers(t, 5)
    sink.append("predictions", "r", rows[3:])
    sink.append("predictions", "r", rows[:3])
    sink.append("predictions", "other", answers(t, 2, "other"))
    sink.flush()
    got = sink.read("predictions", "r")
    assert [r["entity"] for r in got] == ["e0", "e1", "e2", "e3", "e4"]
    assert got[1] == rows[1]
    assert [r["entity"] for r in sink.read("predictions", "r", t + 1, t + 3)] == ["e1", "e2", "e3"]
    assert len(sink.read("predictions", "other")) == 2
    assert sink.read("predictions", "none") == []


def test_feedback_ids_are_claimed_once(sink: Sink) -> None:
    assert sink.claim("r", ["a", "b"]) == [True, True]
    assert sink.claim("r", ["b", "c", "a"]) == [False, True, False]
    assert sink.claim("other", ["a"]) == [True]
    fb = {
        "ts": now(),
        "id": "a",
        "route": "r",
        "request_id": "q1",
        "entity": None,
        "at": None,
        "value": 1.0,
    }
    sink.append("feedback", "r", [fb])
    assert sink.read("feedback", "r") == [fb]


def test_the_log_goes_where_the_predictions_go_unless_configured(tmp_path: Path) -> None:
    from hybridserve.config import project_from_dict
    from hybridserve.quality.sinks import sink_url

    def url(**raw: Any) -> str:
        return sink_url(project_from_dict(raw, tmp_path))

    assert url() == "parquet:///.hybridserve/prediction-log"
    assert url(stores={"online": "redis://127.0.0.1:6379/3"}) == "redis://127.0.0.1:6379/3"
    assert url(prediction_log={"url": "memory://"}) == "memory://"
