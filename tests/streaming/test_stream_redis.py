"""The consumer on Redis Streams and the Redis store: SIGKILLed and restarted consumers,
a consumer group shared by two consumers, reclaimed entries and poison events."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis
from stream_helpers import (
    STREAM,
    WINDOW_FEATURES,
    assert_same_scores,
    event,
    predictions,
    stream_project,
    windows,
)

from backends import redis_url
from hybridserve.config import Project
from hybridserve.examples.fraud.transactions import demo_events
from hybridserve.features.materialize import materialize
from hybridserve.services import Services
from hybridserve.streaming import StreamConsumer

pytestmark = pytest.mark.redis


@pytest.fixture
async def redis_project(make_project: Any) -> AsyncIterator[Project]:
    """The trained project on Redis (features materialized there) with a redis stream."""
    url = redis_url()
    prefix = f"hs_test_{uuid.uuid4().hex[:10]}:"
    project = stream_project(
        make_project,
        stores={"online": url, "prefix": prefix},
        source={"kind": "redis"},
        batch_size=1000,
        claim_idle=0.3,
    )
    services = Services.open(project)
    await materialize(project, services.features, "card_profile")
    await services.close()
    yield project
    client = redis.Redis.from_url(url)
    for p in (prefix, prefix.replace("hs_test_", "hs_ref_")):
        keys = list(client.scan_iter(f"{p}*", count=5000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
    client.close()


async def _reference(project: Project) -> Project:
    """The same project under another prefix (features materialized), for a clean run."""
    prefix = project.stores.prefix.replace("hs_test_", "hs_ref_")
    stores = project.stores.model_copy(update={"prefix": prefix})
    reference = project.model_copy(update={"stores": stores})
    services = Services.open(reference)
    await materialize(reference, services.features, "card_profile")
    await services.close()
    return reference


async def _results(project: Project, cards: list[str]) -> tuple[Any, Any, dict[str, Any]]:
    services = Services.open(project)
    try:
        feats = await windows(services, cards)
        preds = await predictions(services, cards)
    finally:
        await services.close()
    client = redis.Redis.from_url(project.stores.online)
    entries = client.xrange(f"{project.stores.prefix}stream:{STREAM}:out")
    client.close()
    ids = [f[b"id"].decode() for _, f in entries]
    assert len(ids) == len(set(ids)), "an event was emitted twice"
    return feats, preds, {f[b"id"].decode(): orjson.loads(f[b"d"]) for _, f in entries}


async def _preload(
    project: Project, payloads: list[bytes], chunk: int = 5000, pause: float = 0.0
) -> None:
    """Append ``payloads`` to the stream, ``chunk`` at a time, ``pause`` seconds apart."""
    services = Services.open(project)
    consumer = StreamConsumer(services, STREAM, poll_interval=0)
    try:
        await consumer.source.start()
        for i in range(0, len(payloads), chunk):
            await consumer.source.append(payloads[i : i + chunk])
            await asyncio.sleep(pause)
    finally:
        await consumer.close()
        await services.close()


async def _run_in_process(project: Project, **kwargs: Any) -> Any:
    services = Services.open(project)
    consumer = StreamConsumer(services, STREAM, poll_interval=0, **kwargs)
    try:
        return await consumer.run(until_idle=1.0)
    finally:
        await consumer.close()
        await services.close()


async def _until_reading(
    client: redis.Redis,
    key: str,
    proc: subprocess.Popen[bytes],
    timeout: float,
    name: bytes | None = b"c1",
) -> None:
    """Wait until the consumer ``name`` (``None``: any) has read from the group since it
    was started."""
    started = time.monotonic()
    while time.monotonic() - started < timeout and proc.poll() is None:
        for c in client.xinfo_consumers(key, "hybridserve"):
            fresh = c["idle"] / 1000 < time.monotonic() - started - 0.05
            if fresh and name in (None, c["name"]):
                return
        await asyncio.sleep(0.01)


@pytest.mark.slow
@pytest.mark.timeout(400)  # 55-85 s alone; past the default 120 s on a loaded machine
async def test_sigkilled_consumers_leave_the_same_results_as_a_clean_run(
    redis_project: Project,
) -> None:
    n = 50_000
    payloads = demo_events(redis_project, n, seed=5, rate=2000.0)
    cards = sorted({orjson.loads(p)["card_id"] for p in payloads})

    reference = await _reference(redis_project)
    await _preload(reference, payloads)
    totals = await _run_in_process(reference)
    assert totals.scored == n

    # Events keep flowing while the consumer is killed: a fifth up front, the rest at about
    # 8,000 events/s from a producer running through the kills.
    await _preload(redis_project, payloads[: n // 5])
    producer = asyncio.create_task(_preload(redis_project, payloads[n // 5 :], 800, 0.1))
    assert redis_project.source_file is not None
    command = [
        sys.executable,
        "-m",
        "hybridserve",
        "stream",
        "run",
        STREAM,
        "--consumer",
        "c1",
        "-p",
        str(redis_project.source_file),
    ]
    rng = random.Random(1)
    client = redis.Redis.from_url(redis_project.stores.online)
    stream_key = f"{redis_project.stores.prefix}stream:{STREAM}"
    kills_mid_batch = 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for _ in range(5):
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        # Kill at a random moment once it has started reading: start-up time (imports, the
        # model) varies a lot on a loaded machine, so a fixed delay may kill it before.
        await _until_reading(client, stream_key, proc, timeout=60.0)
        await asyncio.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        pending = client.xpending(stream_key, "hybridserve")["pending"]
        kills_mid_batch += pending > 0
    await producer
    final = subprocess.run(
        [*command, "--until-idle", "1.5"], env=env, capture_output=True, timeout=120
    )
    assert final.returncode == 0, final.stderr.decode()[-2000:]
    assert client.xpending(stream_key, "hybridserve")["pending"] == 0
    client.close()
    assert kills_mid_batch >= 1, "no kill landed while entries were pending"

    want = await _results(reference, cards)
    got = await _results(redis_project, cards)
    assert len(want[2]) == n
    assert got[0] == want[0]  # window features
    assert_same_scores(got[1], want[1])  # predictions
    assert_same_scores(got[2], want[2])  # the output stream, entry by entry


@pytest.mark.parametrize("partitions", [1, 4])
async def test_a_drain_after_sigkills_with_the_default_name_leaves_nothing_pending(
    redis_project: Project, make_project: Any, partitions: int
) -> None:
    """``stream run`` without ``--consumer``, SIGKILLed three times after reads, then drained
    with ``--until-idle``: nothing is left pending, and the windows, predictions and outputs
    are those of a clean run (no event dead-lettered as late for having waited)."""
    n = 3000
    payloads = demo_events(redis_project, n, seed=7, rate=2000.0)
    cards = sorted({orjson.loads(p)["card_id"] for p in payloads})
    reference = await _reference(redis_project)
    await _preload(reference, payloads)
    assert (await _run_in_process(reference)).scored == n

    # The same project file with the default claim_idle: a dead consumer's entries are not
    # reclaimed for 30 s, so only re-reading its own entries drains them in time.
    stores = {"online": redis_project.stores.online, "prefix": redis_project.stores.prefix}
    source = {"kind": "redis", "partitions": partitions}
    project = stream_project(
        make_project, stores=stores, source=source, batch_size=100, claim_idle=30.0
    )
    await _preload(project, payloads[:600])
    producer = asyncio.create_task(_preload(project, payloads[600:], 200, 0.1))
    assert project.source_file is not None
    command = [sys.executable, "-m", "hybridserve", "stream", "run", STREAM]
    command += ["-p", str(project.source_file)]
    rng = random.Random(3)
    client = redis.Redis.from_url(project.stores.online)
    key = f"{project.stores.prefix}stream:{STREAM}"
    # A partitioned stream's consumer (one, so it holds every partition) reads them all.
    keys = [key] if partitions == 1 else [f"{key}:p{i}" for i in range(partitions)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for _ in range(3):
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await _until_reading(client, keys[-1], proc, timeout=60.0, name=None)
        await asyncio.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    await producer
    final = subprocess.run(
        [*command, "--until-idle", "5"], env=env, capture_output=True, timeout=180
    )
    assert final.returncode == 0, final.stderr.decode()[-2000:]
    assert sum(client.xpending(k, "hybridserve")["pending"] for k in keys) == 0
    assert sum(client.xlen(k) for k in keys) == n
    assert client.xlen(f"{key}:dlq") == 0
    client.close()
    want = await _results(reference, cards)
    got = await _results(project, cards)
    assert got[0] == want[0]  # window features
    assert_same_scores(got[1], want[1])  # predictions
    assert_same_scores(got[2], want[2])  # outputs


@pytest.mark.parametrize("partitions", [1, 4])
async def test_two_consumers_share_the_work_and_process_every_event_once(
    redis_project: Project, partitions: int
) -> None:
    n = 8_000
    if partitions > 1:
        cfg = redis_project.streams[STREAM]
        source = cfg.source.model_copy(update={"partitions": partitions, "member_ttl": 1.0})
        streams = {STREAM: cfg.model_copy(update={"source": source})}
        redis_project = redis_project.model_copy(update={"streams": streams})
    payloads = demo_events(redis_project, n, seed=9, rate=2000.0)
    cards = sorted({orjson.loads(p)["card_id"] for p in payloads})
    reference = await _reference(redis_project)
    await _preload(reference, payloads)
    await _run_in_process(reference)

    project = redis_project.model_copy(
        update={
            "streams": {
                STREAM: redis_project.streams[STREAM].model_copy(update={"batch_size": 200})
            }
        }
    )
    await _preload(project, payloads)
    one, two = await asyncio.gather(
        _run_in_process(project, consumer="c1"), _run_in_process(project, consumer="c2")
    )
    assert one.scored + two.scored == n
    # Both take part. On one key, both consumers' batches touch the same cards, and one may
    # lose every race (seen about once in ten runs, before and after batches were overlapped):
    # it gives up on contention, the other claims its entries and commits them all.
    assert (one.read or one.failures) and (two.read or two.failures)
    if partitions > 1:
        # Partitions change hands only once drained: no entity runs on both at once.
        # Known defect, issue #13: around a hand-over both consumers still commit on the same
        # cards now and then (seen: 2 to 8 conflicts, up to 1,950 duplicates of 8,000); the
        # version check and the seen-set keep the results below exact, so they are the test.
        assert one.scored > 0 and two.scored > 0
        assert one.failures == two.failures == 0
    feats, _, outputs = await _results(project, cards)
    ref_feats, _, ref_outputs = await _results(reference, cards)
    assert set(outputs) == set(ref_outputs)
    for card in cards:
        for name in WINDOW_FEATURES:
            assert feats[card][name] == pytest.approx(ref_feats[card][name]), (card, name)


async def test_a_dead_consumers_entries_are_reclaimed_and_poison_is_dead_lettered(
    redis_project: Project,
) -> None:
    client = redis.Redis.from_url(redis_project.stores.online)
    key = f"{redis_project.stores.prefix}stream:{STREAM}"
    now = time.time()
    events = [event(f"card_{i:06d}", now - 10 + i) for i in range(5)]
    await _preload(redis_project, [orjson.dumps(e) for e in events] + [b"{broken"])
    # A consumer that read everything, kept re-reading entry 2, and died.
    entries = client.xreadgroup("hybridserve", "ghost", {key: ">"})[0][1]
    before_poison = entries[1][0]
    for _ in range(5):
        client.xreadgroup("hybridserve", "ghost", {key: before_poison}, count=1)
    await asyncio.sleep(0.4)
    totals = await _run_in_process(redis_project, consumer="c2")
    assert totals.scored == 4
    dead = client.xrange(f"{key}:dlq")
    reasons = {f[b"entry_id"].decode(): f[b"reason"].decode() for _, f in dead}
    assert reasons[entries[2][0].decode()].startswith("poison: delivered 7 times")
    assert reasons[entries[5][0].decode()].startswith("bad JSON")
    assert len(reasons) == 2
    assert client.xpending(key, "hybridserve")["pending"] == 0
    outputs = client.xrange(f"{key}:out")
    assert sorted(f[b"id"].decode() for _, f in outputs) == sorted(
        e["event_id"] for i, e in enumerate(events) if i != 2
    )
    client.close()


async def test_a_consumer_claims_others_stale_entries_never_its_own(
    redis_project: Project,
) -> None:
    """Its own pending entries are in flight in this process: claiming them again would
    deliver them twice and inflate their delivery counts towards the poison limit."""
    from hybridserve.streaming import open_source

    now = time.time()
    await _preload(redis_project, [orjson.dumps(event("card_000001", now - i)) for i in range(6)])
    mine = open_source(redis_project, STREAM, consumer="c1")
    other = open_source(redis_project, STREAM, consumer="c2")
    try:
        own = [e.id for e in await mine.read(3, 0)]
        theirs = [e.id for e in await other.read(3, 0)]
        await asyncio.sleep(0.1)
        claimed = await mine.claim_stale(0.05, 10)
        assert [e.id for e in claimed] == theirs
        assert [e.deliveries for e in claimed] == [2, 2, 2]
        assert await mine.claim_stale(0.0, 10) == []  # all six are its own now
        assert [e.id for e in await other.claim_stale(0.0, 10)] == own + theirs
    finally:
        await mine.close()
        await other.close()


async def test_a_consumer_on_one_key_sees_a_rival_that_read_lately(
    redis_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On one key any consumer gets any card's events, so a consumer stops computing a batch
    ahead while another one reads (``Shared``); a rival idle for longer than ``ACTIVE`` no
    longer counts, and partitions keep a card on one consumer: never shared."""
    from hybridserve.streaming import open_source
    from hybridserve.streaming.sources import Shared
    from hybridserve.streaming.sources import redis as redis_source

    await _preload(redis_project, [orjson.dumps(event("card_000001", time.time() - 1))])
    mine = open_source(redis_project, STREAM, consumer="c1")
    other = open_source(redis_project, STREAM, consumer="c2")
    try:
        assert isinstance(mine, Shared)
        await mine.start()
        await mine.read(1, 0)
        assert await mine.shared() is False
        await other.start()
        await other.read(1, 0)
        assert await mine.shared() is True
        monkeypatch.setattr(redis_source, "ACTIVE", 0.05)
        await asyncio.sleep(0.1)
        assert await mine.shared() is False
    finally:
        await mine.close()
        await other.close()
    cfg = redis_project.streams[STREAM]
    source = cfg.source.model_copy(update={"partitions": 4})
    parted = redis_project.model_copy(
        update={"streams": {STREAM: cfg.model_copy(update={"source": source})}}
    )
    one = open_source(parted, STREAM, consumer="c1")
    try:
        assert await one.shared() is False  # type: ignore[attr-defined]
    finally:
        await one.close()


async def test_bad_events_among_valid_ones_dead_letter_only_themselves(
    redis_project: Project,
) -> None:
    """8 events with a NaN time (refused when decoded) and 8 the model crashes on (found by
    splitting the batch) among 160 valid ones: exactly the 16 are dead-lettered, each with
    its own reason at its first delivery, and every valid event is scored."""
    client = redis.Redis.from_url(redis_project.stores.online)
    key = f"{redis_project.stores.prefix}stream:{STREAM}"
    now = time.time()
    valid = [event(f"card_{i % 40:06d}", now - 100 + i * 0.1) for i in range(160)]
    crash = {valid[i]["event_id"] for i in range(7, 160, 20)}
    nan = [event(f"card_{i:06d}", "NaN") for i in range(8)]
    mixed = list(valid)
    for n, b in enumerate(nan):
        mixed.insert(n * 21 + 3, b)
    await _preload(redis_project, [orjson.dumps(e) for e in mixed])

    services = Services.open(redis_project)
    consumer = StreamConsumer(services, STREAM, poll_interval=0)
    real = consumer.processor.scorer
    assert real is not None

    class Crashing:
        runtime = real.runtime

        def score_rows(self, entities: list[str], rows: Any, **kw: Any) -> Any:
            if crash & set(kw["event_ids"]):
                raise RuntimeError("model crashed on this event")
            return real.score_rows(entities, rows, **kw)

    consumer.processor.scorer = Crashing()  # type: ignore[assignment]
    try:
        totals = await consumer.run(until_idle=1.0)
    finally:
        await consumer.close()
        await services.close()
    dead = client.xrange(f"{key}:dlq")
    reasons = {
        orjson.loads(f[b"payload"])["event_id"]: (f[b"reason"].decode(), int(f[b"deliveries"]))
        for _, f in dead
    }
    assert len(dead) == len(reasons) == 16
    assert {i: reasons[i] for i in crash} == {
        i: ("failed: RuntimeError: model crashed on this event", 1) for i in crash
    }
    assert {reasons[b["event_id"]] for b in nan} == {
        ("event_time: expected timestamp, got 'NaN'", 1)
    }
    assert totals.scored == 152 and totals.failures == 0
    assert client.xpending(key, "hybridserve")["pending"] == 0
    outputs = {f[b"id"].decode() for _, f in client.xrange(f"{key}:out")}
    assert outputs == {e["event_id"] for e in valid} - crash
    client.close()


def _consumer_command(project: Project, *args: str) -> list[str]:
    """``stream run`` as consumer ``c1``, through the fault-injecting launcher."""
    assert project.source_file is not None
    launcher = os.path.join(os.path.dirname(__file__), "faulty_consumer.py")
    run = ["stream", "run", STREAM, "--consumer", "c1", "-p", str(project.source_file)]
    return [sys.executable, launcher, *run, *args]


async def _until_marked(marks: Any, steps: set[str], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline and proc.poll() is None:
        if marks.exists() and steps & set(marks.read_text().split()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the consumer never reached {steps} (exit code {proc.poll()})")


@pytest.mark.parametrize("state", ["idle", "slow_model", "failed_batch", "infinite_time"])
async def test_sigterm_stops_the_consumer_process_in_every_state(
    redis_project: Project, tmp_path: Any, state: str
) -> None:
    """SIGTERM ends ``stream run`` within seconds whatever it is doing: blocked in a read,
    inside a slow model call, backing off after failed batches, or after an event whose
    time is ``-inf`` failed its batch."""
    now = time.time()
    events = [orjson.dumps(event(f"card_{i:06d}", now - 10 + i)) for i in range(5)]
    if state == "infinite_time":
        events.insert(2, orjson.dumps(event("card_000009", 0.0) | {"event_time": "-inf"}))
    await _preload(redis_project, [] if state == "idle" else events)
    marks = tmp_path / "marks"
    fault = {"slow_model": "slow", "failed_batch": "fail"}.get(state, "")
    env = {**os.environ, "HS_TEST_FAULT": fault, "HS_TEST_MARKS": str(marks)}
    log = tmp_path / "stderr"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            _consumer_command(redis_project), env=env, stdout=subprocess.DEVNULL, stderr=err
        )
    client = redis.Redis.from_url(redis_project.stores.online)
    try:
        if state == "idle":
            key = f"{redis_project.stores.prefix}stream:{STREAM}"
            await _until_reading(client, key, proc, timeout=60.0)
            await asyncio.sleep(0.5)  # inside a blocking read
        elif state == "slow_model":
            await _until_marked(marks, {"score"}, proc)
        elif state == "failed_batch":
            await _until_marked(marks, {"fail"}, proc)
            await asyncio.sleep(0.3)  # rewinding, re-reading one at a time, failing again
        else:
            await _until_marked(marks, {"fail", "done"}, proc)
            await asyncio.sleep(0.3)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running 5 s after SIGTERM ({state}): {log.read_text()[-3000:]}"
            ) from None
        # Stopped by its own shutdown, not by the backstop timer (that exits 128 + 15).
        assert proc.returncode == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        client.close()
