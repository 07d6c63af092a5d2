"""Stream answers in the prediction log: each scored event once its batch is committed, with
its event id and the features it was scored with."""

from __future__ import annotations

import copy
import time
from typing import Any

import orjson
from prometheus_client import generate_latest
from stream_helpers import STREAM, consume, dumps, event

from hybridserve.services import Services
from hybridserve.streaming import open_source
from hybridserve.streaming.sources.memory import drop_memory_log


async def test_scored_events_are_logged_with_their_features(make_project: Any) -> None:
    from hybridserve.config import load_project
    from hybridserve.examples.fraud import PROJECT_FILE

    stream = copy.deepcopy(load_project(PROJECT_FILE, env=False).streams[STREAM].model_dump())
    stream["source"] = {"kind": "memory"}
    project = make_project({"streams": {STREAM: stream}}, log={"stream": 1.0})
    drop_memory_log(f"{project.stores.prefix}stream:{STREAM}")
    services = Services.open(project)
    now = time.time()
    sent = [event("card_000001", now - 5), event("card_000002", now - 4, amount=30)]
    try:
        await open_source(project, STREAM).append(dumps(sent))
        consumer, totals = await consume(services)
        assert totals.scored == 2
        plog = services.prediction_log
        assert plog.running and plog.flush()
        rows = plog.sink.read("predictions", "fraud")
        assert sorted(r["event_id"] for r in rows) == sorted(e["event_id"] for e in sent)
        assert {r["source"] for r in rows} == {"stream"}
        feats = orjson.loads(rows[0]["features"])
        # The features the route scored it with (the example route reads card_profile).
        assert set(project.route_features("fraud")["card_profile"]) <= set(feats)
        assert rows[0]["latency_ms"] >= 0
        text = generate_latest(consumer.metrics.registry).decode()
        assert 'hybridserve_prediction_log_total{outcome="written",route="fraud"} 2.0' in text
    finally:
        await services.close()
