"""Shared pieces of the streaming tests: a stream project, events, reading results back."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from hybridserve.config import Project
from hybridserve.services import Services
from hybridserve.streaming import StreamConsumer

STREAM = "transactions"
WINDOW_FEATURES = [
    "txn_count_10m",
    "amount_sum_10m",
    "amount_mean_1h",
    "amount_max_1h",
    "distinct_merchants_1h",
    "foreign_count_1h",
    "txn_count_hour",
]


def stream_project(make_project: Callable[..., Project], **stream: Any) -> Project:
    """The trained fraud project with its ``transactions`` stream changed by ``stream``."""
    from hybridserve.config import load_project
    from hybridserve.examples.fraud import PROJECT_FILE

    base = copy.deepcopy(load_project(PROJECT_FILE, env=False).streams[STREAM].model_dump())
    base["source"] = {"kind": "memory"}
    changes: dict[str, Any] = {}
    for key, value in stream.items():
        if key == "stores":
            changes["stores"] = value
        else:
            base[key] = value
    changes["streams"] = {STREAM: base}
    return make_project(changes)


KAFKA_TEST_SETTINGS = {"session_timeout": 6.0, "max_poll_interval": 10.0, "partitions": 2}
"""Short group timeouts: with librdkafka's default ``max.poll.interval.ms`` a join waits
minutes for members that are gone."""

_ids = itertools.count()


def event(card: str, t: float, amount: float = 10.0, **extra: Any) -> dict[str, Any]:
    body = {
        "event_id": f"e{next(_ids):07d}",
        "card_id": card,
        "event_time": t,
        "amount": amount,
        "merchant_id": f"m{int(amount) % 7}",
        "merchant_category": "grocery",
        "is_foreign": False,
    }
    body.update(extra)
    return body


def fresh_memory_log(project: Project) -> Any:
    """The in-process log of the project's stream, emptied (the memory source's test handle)."""
    from hybridserve.streaming.sources.memory import drop_memory_log, memory_log

    key = f"{project.stores.prefix}stream:{STREAM}"
    drop_memory_log(key)
    return memory_log(key)


async def append_events(services: Services, payloads: list[bytes]) -> None:
    """Append ``payloads`` to the project's stream through its own producer side."""
    from hybridserve.streaming import open_source

    await open_source(services.project, STREAM).append(payloads)


def dumps(events: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(e) for e in events]


async def consume(
    services: Services, *, until_idle: float = 0.3, **kwargs: Any
) -> tuple[StreamConsumer, Any]:
    consumer = StreamConsumer(services, STREAM, poll_interval=0, **kwargs)
    try:
        totals = await consumer.run(until_idle=until_idle)
    finally:
        await consumer.close()
    return consumer, totals


async def windows(services: Services, cards: list[str]) -> dict[str, dict[str, Any]]:
    rows = await services.features.read({"card_txn_windows": WINDOW_FEATURES}, cards)
    return {r.entity: {k: v.value for k, v in r.values.items()} for r in rows}


async def predictions(services: Services, cards: list[str]) -> dict[str, tuple[Any, ...]]:
    records = await services.predictions.get("fraud", cards)
    return {
        c: (r.score, r.as_of, r.event_id, r.model_version, r.source)
        for c, r in zip(cards, records, strict=True)
        if r is not None
    }


def assert_same_scores(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Predictions (card -> score first, then as_of, event id, version, source) or outputs
    (event id -> body) equal to a clean run's but for the scores' last bits: a batch of up to
    64 rows is scored by treelite's GTIL, a larger one by the library (they agree within
    ``runtimes.compiled.RTOL``), and batch boundaries fall elsewhere after a crash, with two
    consumers, or with the next batch computed while the last commits."""
    assert got.keys() == want.keys()
    for key, value in got.items():
        ref = want[key]
        if isinstance(value, dict):
            score, rest = value["score"], {**value, "score": 0}
            ref_score, ref_rest = ref["score"], {**ref, "score": 0}
        else:
            score, *rest = value
            ref_score, *ref_rest = ref
        assert rest == ref_rest, key
        assert score == pytest.approx(ref_score, rel=1e-12), key
