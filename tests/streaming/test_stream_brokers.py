"""The consumer on Kafka (Tansu) and NATS JetStream, with the Redis store: SIGKILLed
consumers leave what a clean run leaves; on Kafka, two consumers share the partitions and a
consumer joining mid-stream (a rebalance) loses and double-counts nothing.

The clean reference run reads the same events from the in-process source: windows,
predictions and outputs depend on each entity's events and their order, not on the broker.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import redis
from stream_helpers import (
    KAFKA_TEST_SETTINGS,
    STREAM,
    WINDOW_FEATURES,
    assert_same_scores,
    predictions,
    stream_project,
    windows,
)

from backends import nats_url, redis_url
from hybridserve.config import MemorySourceConfig, Project
from hybridserve.examples.fraud.transactions import demo_events
from hybridserve.features.materialize import materialize
from hybridserve.services import Services
from hybridserve.streaming import StreamConsumer, open_producer
from hybridserve.streaming.sources.memory import drop_memory_log

pytestmark = pytest.mark.redis
Outputs = Callable[[Project], dict[str, Any]]


@pytest.fixture
async def on_redis(make_project: Any) -> AsyncIterator[Callable[..., Any]]:
    """``make(source, **stream)``: the trained project on Redis (features materialized) with
    the given source; every prefix it made is cleaned up afterwards."""
    url, prefixes = redis_url(), []

    async def make(source: dict[str, Any], **stream: Any) -> Project:
        prefix = f"hs_test_{uuid.uuid4().hex[:10]}:"
        prefixes.append(prefix)
        stream = {"batch_size": 200, "claim_idle": 0.3, **stream}
        stores = {"online": url, "prefix": prefix}
        project = stream_project(make_project, stores=stores, source=source, **stream)
        services = Services.open(project)
        await materialize(project, services.features, "card_profile")
        await services.close()
        return project

    yield make
    client = redis.Redis.from_url(url)
    for p in prefixes + [p.replace("hs_test_", "hs_ref_") for p in prefixes]:
        keys = list(client.scan_iter(f"{p}*", count=5000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
    client.close()


async def _clean_run(project: Project, payloads: list[bytes]) -> tuple[Project, dict[str, Any]]:
    """The same events through the in-process source, under another prefix: that project
    and its outputs by event id."""
    prefix = project.stores.prefix.replace("hs_test_", "hs_ref_")
    stream = project.streams[STREAM].model_copy(
        update={"source": MemorySourceConfig(kind="memory")}
    )
    reference = project.model_copy(
        update={
            "stores": project.stores.model_copy(update={"prefix": prefix}),
            "streams": {STREAM: stream},
        }
    )
    services = Services.open(reference)
    await materialize(reference, services.features, "card_profile")
    producer = open_producer(reference, STREAM)
    await producer.append(payloads)
    consumer = StreamConsumer(services, STREAM, poll_interval=0)
    try:
        totals = await consumer.run(until_idle=0.5)
        assert totals.scored == len(payloads)
        log = consumer.io.source.log  # type: ignore[attr-defined]
        outputs = {i: orjson.loads(d) for i, d in log.outputs}
    finally:
        await consumer.close()
        await services.close()
        drop_memory_log(f"{prefix}stream:{STREAM}")
    return reference, outputs


async def _produce(project: Project, payloads: list[bytes], chunk: int, pause: float) -> None:
    producer = open_producer(project, STREAM)
    try:
        for i in range(0, len(payloads), chunk):
            await producer.append(payloads[i : i + chunk])
            await asyncio.sleep(pause)
    finally:
        await producer.close()


async def _state(project: Project, cards: list[str]) -> tuple[Any, Any]:
    services = Services.open(project)
    try:
        return await windows(services, cards), await predictions(services, cards)
    finally:
        await services.close()


def _kafka_outputs(project: Project) -> dict[str, Any]:
    """The output topic, by event id; a repeated id must repeat the same payload."""
    import confluent_kafka as ck

    src = project.streams[STREAM].source
    topic = f"{src.topic}.out"  # type: ignore[union-attr]
    c = ck.Consumer({"bootstrap.servers": src.brokers, "group.id": f"r{uuid.uuid4().hex}"})  # type: ignore[union-attr]
    meta = c.list_topics(topic, timeout=10).topics[topic]
    c.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in meta.partitions])
    out: dict[str, Any] = {}
    quiet = time.monotonic()
    while time.monotonic() - quiet < 2.0:
        for m in c.consume(1000, 0.2):
            if m.error() is None:
                quiet = time.monotonic()
                body = orjson.loads(m.value())
                assert out.setdefault(m.key().decode(), body) == body
    c.close()
    return out


def _nats_outputs(project: Project) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        import nats

        src = project.streams[STREAM].source
        nc = await nats.connect(src.url)  # type: ignore[union-attr]
        js = nc.jetstream()
        config = nats.js.api.ConsumerConfig(ack_policy=nats.js.api.AckPolicy.NONE)
        subject, name = f"{src.stream}.out", f"{src.stream}_OUT"  # type: ignore[union-attr]
        sub = await js.pull_subscribe(subject, stream=name, config=config)
        out: dict[str, Any] = {}
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            for m in msgs:
                event_id = m.headers["Nats-Msg-Id"]
                assert event_id not in out, "an event was emitted twice"
                out[event_id] = orjson.loads(m.data)
        await nc.close()
        return out

    return asyncio.run(read())


async def _sigkill_run(project: Project, kills: int, seed: int) -> list[bytes]:
    """``stream run`` as ``c1``, SIGKILLed ``kills`` times while events keep coming, each
    time soon after it committed a batch, then run to the end. Returns the events."""
    n = 5000
    payloads = demo_events(project, n, seed=seed, rate=2000.0)
    await _produce(project, payloads[: n // 4], 2000, 0.0)
    # The rest at about 250 events/s, so events keep coming through every kill (a consumer
    # faster than the producer would otherwise drain the stream before the last kill and
    # never commit another batch).
    producer = asyncio.create_task(_produce(project, payloads[n // 4 :], 25, 0.1))
    assert project.source_file is not None
    launcher = os.path.join(os.path.dirname(__file__), "faulty_consumer.py")
    command = [sys.executable, launcher, "stream", "run", STREAM, "--consumer", "c1"]
    command += ["-p", str(project.source_file)]
    rng = random.Random(seed)
    marks = project.base_dir / "marks"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HS_TEST_MARKS": str(marks)}
    for _ in range(kills):
        marks.write_text("")
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 90.0
            while "done" not in marks.read_text() and proc.poll() is None:
                assert time.monotonic() < deadline, "the consumer never committed a batch"
                await asyncio.sleep(0.02)
            await asyncio.sleep(rng.uniform(0.0, 0.5))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    await producer
    final = subprocess.run(
        [*command, "--until-idle", "2"], env=env, capture_output=True, timeout=180
    )
    assert final.returncode == 0, final.stderr.decode()[-2000:]
    return payloads


async def _same_as_a_clean_run(project: Project, payloads: list[bytes], outputs: Outputs) -> None:
    cards = sorted({orjson.loads(p)["card_id"] for p in payloads})
    reference, want_outputs = await _clean_run(project, payloads)
    want, got = await _state(reference, cards), await _state(project, cards)
    assert got[0] == want[0]  # window features
    assert_same_scores(got[1], want[1])  # predictions
    assert_same_scores(await asyncio.to_thread(outputs, project), want_outputs)


def _kafka(brokers: str, **more: Any) -> dict[str, Any]:
    """A Kafka source of its own. Two consumers in one process on a loaded machine may go
    longer than 10 s between reads (the backpressure wait), so those tests allow 30 s."""
    tag = uuid.uuid4().hex[:10]
    return {
        "kind": "kafka",
        "brokers": brokers,
        "topic": f"hs_test_{tag}",
        "group": f"g_{tag}",
        **KAFKA_TEST_SETTINGS,
        **more,
    }


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_sigkilled_kafka_consumers_leave_the_same_results_as_a_clean_run(
    on_redis: Any, kafka_brokers: str
) -> None:
    project = await on_redis(_kafka(kafka_brokers))
    payloads = await _sigkill_run(project, kills=3, seed=5)
    await _same_as_a_clean_run(project, payloads, _kafka_outputs)


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_sigkilled_nats_consumers_leave_the_same_results_as_a_clean_run(
    on_redis: Any,
) -> None:
    stream = f"HS_TEST_{uuid.uuid4().hex[:10]}"
    source = {"kind": "nats", "url": nats_url(), "stream": stream, "ack_wait": 2.0}
    project = await on_redis(source)
    try:
        payloads = await _sigkill_run(project, kills=3, seed=6)
        await _same_as_a_clean_run(project, payloads, _nats_outputs)
    finally:
        await _drop_nats(source["url"], stream)


async def _drop_nats(url: str, stream: str) -> None:
    import contextlib

    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    for name in (stream, f"{stream}_OUT", f"{stream}_DLQ"):
        with contextlib.suppress(Exception):
            await js.delete_stream(name)
    await nc.close()


async def _consume(project: Project, name: str, stop: asyncio.Event | None = None) -> Any:
    services = Services.open(project)
    consumer = StreamConsumer(services, STREAM, consumer=name, poll_interval=0)
    try:
        return await consumer.run(stop, until_idle=None if stop else 2.0)
    finally:
        await consumer.close()
        await services.close()


async def _every_event_once(project: Project, payloads: list[bytes], scored: int) -> None:
    cards = sorted({orjson.loads(p)["card_id"] for p in payloads})
    reference, want_outputs = await _clean_run(project, payloads)
    assert scored == len(payloads)  # none lost, none counted twice
    feats, _ = await _state(project, cards)
    want, _ = await _state(reference, cards)
    for card in cards:
        for name in WINDOW_FEATURES:
            assert feats[card][name] == pytest.approx(want[card][name]), (card, name)
    assert set(await asyncio.to_thread(_kafka_outputs, project)) == set(want_outputs)


async def test_two_kafka_consumers_share_the_partitions_and_process_every_event_once(
    on_redis: Any, kafka_brokers: str
) -> None:
    project = await on_redis(_kafka(kafka_brokers, partitions=4, max_poll_interval=30.0))
    payloads = demo_events(project, 4000, seed=9, rate=2000.0)
    await _produce(project, payloads, 4000, 0.0)
    one, two = await asyncio.gather(_consume(project, "c1"), _consume(project, "c2"))
    assert one.scored > 0 and two.scored > 0
    await _every_event_once(project, payloads, one.scored + two.scored)


async def test_a_kafka_consumer_joining_mid_stream_loses_and_double_counts_nothing(
    on_redis: Any, kafka_brokers: str
) -> None:
    """c1 is consuming while events arrive; c2 joins, the group rebalances (c1's partitions
    are revoked mid-batch and split between the two), and both run to the end."""
    project = await on_redis(_kafka(kafka_brokers, partitions=4, max_poll_interval=30.0))
    payloads = demo_events(project, 6000, seed=11, rate=2000.0)
    await _produce(project, payloads[:1000], 1000, 0.0)
    # The rest arrives over about 12 s, so events are still coming well after c2 joins at 5 s
    # (and c1 never idles long enough to stop): on a fast machine they all came within 1 s.
    producer = asyncio.create_task(_produce(project, payloads[1000:], 100, 0.25))
    first = asyncio.create_task(_consume(project, "c1"))
    await asyncio.sleep(5.0)  # c1 joined and is working
    second = asyncio.create_task(_consume(project, "c2"))
    await producer
    one, two = await first, await second
    assert two.scored > 0, "c2 was never given partitions"
    await _every_event_once(project, payloads, one.scored + two.scored)
