"""The example's card transactions for the stream: generated for the project's cards, and
replayed through a consumer so some online answers come from ``stream`` (the demo's step 4).

``await replay_demo(project, 1000)`` writes 1,000 transactions of cards the project knows
(event times ending now) to the ``transactions`` stream's source (a new JSONL file for a
replay source, ``append`` for the others) and consumes until the stream is idle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from hybridserve.config import Project, ReplaySourceConfig
from hybridserve.examples.fraud.data import generate_transactions
from hybridserve.services import Services
from hybridserve.streaming.consumer import StreamConsumer, Totals
from hybridserve.streaming.sources import open_producer, stream_config

DEMO_STREAM = "transactions"


@dataclass(slots=True)
class DemoResult:
    stream: str
    events: int
    totals: Totals
    entities: list[str]
    """Cards that got a stream prediction (a sample to ask the server about)."""
    seconds: float


def demo_events(
    project: Project, n_events: int, *, seed: int = 11, rate: float = 200.0
) -> list[bytes]:
    """``n_events`` JSON transactions of the project's cards, the last one about now."""
    import pyarrow.parquet as pq

    view = project.feature_views.get("card_profile")
    cards: list[str] | int = 1000
    if view is not None and view.source is not None and project.path(view.source.path).exists():
        column = pq.read_table(project.path(view.source.path), columns=["card_id"])["card_id"]
        cards = column.to_pylist()
    start = datetime.fromtimestamp(time.time() - n_events / rate - 1.0, UTC)
    table = generate_transactions(n_events, cards=cards, seed=seed, start=start, rate_per_s=rate)
    rows = table.to_pylist()
    for row in rows:
        row["event_time"] = row["event_time"].timestamp()
    return [orjson.dumps(r) for r in rows]


async def replay_demo(
    project: Project,
    n_events: int = 1000,
    *,
    stream: str = DEMO_STREAM,
    seed: int | None = None,
    services: Services | None = None,
) -> DemoResult:
    """Feed ``n_events`` demo transactions through stream ``stream``'s consumer."""
    cfg = stream_config(project, stream)
    own = services is None
    services = services or Services.open(project)
    started = time.perf_counter()
    try:
        payloads = demo_events(
            project, n_events, seed=seed if seed is not None else int(time.time())
        )
        if isinstance(cfg.source, ReplaySourceConfig):
            folder = project.path(cfg.source.path)
            folder.mkdir(parents=True, exist_ok=True)
            name = f"demo-{time.time_ns()}.jsonl"
            (folder / name).write_bytes(b"".join(p + b"\n" for p in payloads))
            consumer = StreamConsumer(services, stream, consumer="demo", poll_interval=0)
        else:
            producer = open_producer(project, stream, kv=services.online_kv)
            try:
                await producer.append(payloads)
            finally:
                await producer.close()
            consumer = StreamConsumer(services, stream, consumer="demo", poll_interval=0)
        try:
            totals = await consumer.run(until_idle=0.3)
        finally:
            await consumer.close()
        cards = list(dict.fromkeys(orjson.loads(p)["card_id"] for p in payloads))
    finally:
        if own:
            await services.close()
    return DemoResult(stream, n_events, totals, cards[:20], time.perf_counter() - started)
