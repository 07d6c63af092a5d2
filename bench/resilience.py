"""Serving on Redis under load: fallbacks while Redis is healthy, and answers through an outage.

Two runs of ``hybridserve serve`` on the bench project with its stores on Redis (server on core
0, wrk on core 1, 64 connections, the route's stored predictions fresh):

The L1 cache is off by default (``--l1 0``), so every answer reads Redis.

1. **healthy**: straight to Redis for ``--seconds``. Every answer should come from the store or
   L1; the share of fallbacks is reported (target: under 1%). Before the loop-lag rule and the
   blocking connection pool, the store and model breakers opened within 0.3 s of the load
   starting, and most answers were fallbacks.
2. **outage**: through a TCP proxy this script controls; after a third of the run the proxy
   closes (Redis is "down") for ``--outage`` seconds, then comes back. Every answer must still be
   a 2xx (from L1, the fallback chain), and answers go back to the store afterwards.

    python bench/resilience.py [--seconds 20] [--outage 10]

Prints a table and a ``RESULT {json}`` line. Needs a Redis server on 127.0.0.1:6379 and wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _online import loadgen, project, servers  # noqa: E402

from tcp_proxy import TcpProxy  # noqa: E402

REDIS = ("127.0.0.1", 6379)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each run")
    ap.add_argument("--outage", type=float, default=10.0, help="how long Redis is down")
    ap.add_argument("--work", type=Path, default=HERE / ".work-resilience")
    ap.add_argument("--cards", type=int, default=5000)
    ap.add_argument(
        "--l1",
        type=int,
        default=0,
        help="L1 cache size (default 0: every answer reads Redis, which is what is tested)",
    )
    return ap.parse_args(argv)


@contextmanager
def proxy_thread() -> Iterator[tuple[TcpProxy, asyncio.AbstractEventLoop]]:
    """A TCP proxy to Redis, run on its own event loop in a thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    proxy = TcpProxy(*REDIS)
    asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(10)
    try:
        yield proxy, loop
    finally:
        asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def serve_spec(bench: project.BenchProject, env: dict[str, str]) -> servers.ServerSpec:
    port = servers.free_port()
    argv = [str(servers.HYBRIDSERVE), "serve", "-p", str(bench.project_dir)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    return servers.ServerSpec(
        "stored",
        "hybridserve on Redis, stored predictions",
        argv,
        f"/v1/predict/{project.ROUTE}",
        bench.bodies["stored"],
        "/v2/health/ready",
        env=env,
    )


def run(spec: servers.ServerSpec, seconds: float, logs: Path) -> loadgen.LoadResult:
    with servers.RunningServer(spec, core=0, log=logs / f"{spec.key}.log") as server:
        # Warm up (L1, connections) for a couple of seconds, then measure.
        loadgen.run_wrk(server.port, spec.path, spec.bodies, concurrency=64, seconds=2, core=1)
        result = loadgen.run_wrk(
            server.port, spec.path, spec.bodies, concurrency=64, seconds=seconds, core=1
        )
        # Why answers fell back, and where the breakers ended, as the server counted them.
        _, text = servers.http(server.port, "/metrics")
        for line in text.decode().splitlines():
            if line.startswith(("hybridserve_fallbacks_total", "hybridserve_breaker_state")):
                print("   ", line)
        return result


def row(name: str, r: loadgen.LoadResult) -> str:
    total = sum(r.sources.values()) or 1
    fallback = sum(v for k, v in r.sources.items() if k.startswith("fallback")) / total
    non2xx = sum(v for k, v in r.sources.items() if k.startswith("http_"))
    return (
        f"| {name} | {r.requests:,} | {r.rps:,.0f} | {r.p99_ms:.1f} | {100 * fallback:.2f}% "
        f"| {non2xx} | {r.errors} | {r.mix()} |"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if loadgen.wrk_path() is None:
        print("wrk not found: apt-get update && apt-get install -y wrk", file=sys.stderr)
        return 2
    prefix = f"hs-bench-res-{uuid.uuid4().hex[:8]}:"
    redis_url = f"redis://{REDIS[0]}:{REDIS[1]}/0"
    os.environ["HYBRIDSERVE_ONLINE_STORE_URL"] = redis_url
    os.environ["HYBRIDSERVE_STORE_PREFIX"] = prefix
    logs = args.work / "logs"
    print(f"building the bench project under {args.work} (stores on Redis, prefix {prefix})")
    bench = project.build(args.work, n_cards=args.cards)
    print(f"stored predictions: {bench.stored:,}")
    project_file = bench.project_dir / "hybridserve.yaml"
    doc = yaml.safe_load(project_file.read_text())
    doc.setdefault("server", {})["l1_cache_size"] = args.l1
    project_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {"HYBRIDSERVE_ONLINE_STORE_URL": redis_url, "HYBRIDSERVE_STORE_PREFIX": prefix}
    results: dict[str, Any] = {}
    try:
        healthy = run(serve_spec(bench, env), args.seconds, logs)
        results["healthy"] = healthy
        with proxy_thread() as (proxy, loop):
            spec = serve_spec(
                bench, {**env, "HYBRIDSERVE_ONLINE_STORE_URL": f"redis://127.0.0.1:{proxy.port}/0"}
            )

            def outage() -> None:
                time.sleep(2 + args.seconds / 3)  # the warm-up, then a third of the run
                asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(10)
                time.sleep(args.outage)
                asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(10)

            cut = threading.Thread(target=outage, daemon=True)
            cut.start()
            results["outage"] = run(spec, args.seconds + args.outage, logs)
            cut.join()
    finally:
        import redis

        client = redis.Redis(*REDIS)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        client.close()

    print()
    print("| run | requests | rps | p99 ms | fallbacks | non-2xx | errors | sources |")
    print("|---|---|---|---|---|---|---|---|")
    print(row("healthy Redis", results["healthy"]))
    print(row(f"Redis down {args.outage:.0f} s", results["outage"]))
    out = {}
    for name, r in results.items():
        total = sum(r.sources.values()) or 1
        out[f"{name}_fallback_share"] = round(
            sum(v for k, v in r.sources.items() if k.startswith("fallback")) / total, 5
        )
        out[f"{name}_non_2xx"] = sum(v for k, v in r.sources.items() if k.startswith("http_"))
        out[f"{name}_rps"] = round(r.rps)
        out[f"{name}_p99_ms"] = round(r.p99_ms, 1)
    print("RESULT " + json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
