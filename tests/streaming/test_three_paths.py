"""One card, three paths: a batch run, an online computation and the stream consumer score it
from the same feature values and agree; after new events the stream's answer is the fresher
one, and the one served.

The route is the fraud example's ``fraud_windows``, whose model reads card_profile features and
the stream's window features (``card_txn_windows``). The project is the trained example on its
embedded (SQLite) stores, with the ``transactions`` stream on the in-process source and
scoring ``fraud_windows`` instead of ``fraud``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from stream_helpers import STREAM, consume, dumps, event, stream_project

from hybridserve.batch import run_job
from hybridserve.config import Project
from hybridserve.examples.fraud.data import WINDOW_FEATURES
from hybridserve.examples.fraud.train import RULES_FEATURES, WINDOWS_FEATURES, WINDOWS_MODEL
from hybridserve.records import PredictionRecord, to_iso
from hybridserve.services import Services
from hybridserve.streaming.sources import open_producer
from hybridserve.streaming.sources.memory import drop_memory_log, memory_log

ROUTE = "fraud_windows"
CARD = "card_000042"
JOB = "windows_now"


def _project(make_project: Callable[..., Project]) -> Project:
    stream_project(make_project, route=ROUTE)  # the in-process source, scoring fraud_windows
    return make_project(
        {
            "batch_jobs": {
                JOB: {
                    "route": ROUTE,
                    "input": {"path": "data/three_paths.parquet", "timestamp": "event_time"},
                    "chunk_rows": 20,
                    "workers": 1,
                }
            },
            # L1 is not told about other processes' writes (docs/architecture.md, "The L1
            # cache"): it could keep serving the online answer computed below.
            "server": {"l1_cache_size": 0},
        }
    )


async def _append(project: Project, payloads: list[bytes]) -> None:
    """Produce ``payloads`` to the stream (what ``POST /v1/events`` does on other sources)."""
    producer = open_producer(project, STREAM)
    try:
        await producer.append(payloads)
    finally:
        await producer.close()


async def _stored(services: Services) -> PredictionRecord:
    (record,) = await services.predictions.get(ROUTE, [CARD])
    assert record is not None
    return record


def _batch_input(project: Project, values: dict[str, Any], as_of: float) -> None:
    """The card's row for the batch run: its features as they are in the store, and their time."""
    moment = datetime.fromtimestamp(as_of, UTC)
    columns: dict[str, Any] = {
        "card_id": pa.array([CARD]),
        "event_time": pa.array([moment], pa.timestamp("us", tz="UTC")),
    }
    for name in WINDOWS_FEATURES:
        columns[name] = pa.array([float(values[name])], pa.float64())
    pq.write_table(pa.table(columns), project.path("data/three_paths.parquet"))


async def test_batch_online_and_stream_agree_on_one_card_and_the_fresher_stream_is_served(
    make_project: Callable[..., Project], serve: Any
) -> None:
    project = _project(make_project)
    key = f"{project.stores.prefix}stream:{STREAM}"
    drop_memory_log(key)
    log = memory_log(key)
    services = Services.open(project)
    t = float(int(time.time()))  # whole seconds: a Parquet timestamp keeps them exactly
    try:
        # (c) The stream: three transactions; the card is scored on each, with its windows
        # right after it. The last one's score is the stored one.
        first = [
            event(CARD, t - 90, amount=25.0),
            event(CARD, t - 60, amount=40.0, is_foreign=True),
            event(CARD, t - 30, amount=80.0),
        ]
        await _append(project, dumps(first))
        _, totals = await consume(services)
        assert (totals.read, totals.scored, totals.dead) == (3, 3, 0)
        streamed = await _stored(services)
        assert (streamed.source, streamed.event_id) == ("stream", first[-1]["event_id"])
        assert streamed.as_of == first[-1]["event_time"]
        outputs = [orjson.loads(p) for _, p in log.outputs]
        assert [o["event_id"] for o in outputs] == [e["event_id"] for e in first]
        assert outputs[-1]["score"] == streamed.score
        assert len({o["score"] for o in outputs}) == 3  # each event moved the score

        # The features every path is to see: the card's profile as materialized, and its
        # windows as the stream left them (written with the last event's time).
        (row,) = await services.features.read(
            {"card_profile": RULES_FEATURES, "card_txn_windows": WINDOW_FEATURES}, [CARD]
        )
        assert {v.status for v in row.values.values()} == {"present"}
        profile = {k: row.values[k].value for k in RULES_FEATURES}
        windows = {k: row.values[k].value for k in WINDOW_FEATURES}
        assert windows["txn_count_10m"] == 3 and windows["amount_sum_10m"] == 145.0
        assert windows["foreign_count_1h"] == 1 and windows["amount_max_1h"] == 80.0
        values = {**profile, **windows}
        assert set(values) == set(WINDOWS_FEATURES)

        # (a) A batch run over a file holding exactly those values, as of the last event.
        _batch_input(project, values, streamed.as_of)
        manifest = await asyncio.to_thread(run_job, project, JOB)
        assert manifest.status == "completed" and manifest.total("scored") == 1
        (batched,) = await services.predictions.get_run(ROUTE, manifest.run_id, [CARD])
        assert batched is not None and batched.source == "batch"
        assert batched.as_of == streamed.as_of

        # (b) An online computation: the router reads the same values from the store.
        app, client = await serve(project)
        app.state.router.runs.interval = 0
        r = await client.post(f"/v1/predict/{ROUTE}", json={"entity": CARD, "mode": "compute"})
        assert r.status_code == 200, r.text
        online = r.json()["predictions"][0]
        assert online["source"] == "online"

        # The three records: one model version, one score.
        assert batched.model == streamed.model == online["model"] == WINDOWS_MODEL
        assert batched.model_version == streamed.model_version == online["model_version"]
        assert batched.feature_fingerprint == streamed.feature_fingerprint
        assert abs(batched.score - streamed.score) <= 1e-12
        assert abs(online["score"] - streamed.score) <= 1e-12

        # New transactions: a burst of larger, foreign ones. The stream re-scores the card.
        later = [
            event(CARD, t - 20, amount=400.0, is_foreign=True),
            event(CARD, t - 10, amount=650.0, is_foreign=True),
        ]
        await _append(project, dumps(later))
        _, totals = await consume(services)
        assert (totals.read, totals.scored, totals.dead) == (2, 2, 0)
        fresher = await _stored(services)
        assert (fresher.source, fresher.event_id) == ("stream", later[-1]["event_id"])
        assert fresher.as_of == later[-1]["event_time"] > batched.as_of
        assert fresher.model_version == batched.model_version
        assert fresher.score > batched.score + 0.01  # the burst raised the score

        # Served from the store, the route answers with the stream's fresher score, not the
        # batch run's (still published, and still the route's run).
        pointer = await services.predictions.current_run(ROUTE)
        assert pointer is not None and pointer.run_id == manifest.run_id
        r = await client.post(f"/v1/predict/{ROUTE}", json={"entity": CARD, "mode": "stored"})
        assert r.status_code == 200, r.text
        served = r.json()["predictions"][0]
        assert (served["source"], served["score"]) == ("stream", fresher.score)
        assert served["as_of"] == to_iso(fresher.as_of)
        assert served["model_version"] == fresher.model_version
    finally:
        await services.close()
        drop_memory_log(key)
