"""Batch-scoring benchmark: hybridserve end to end against the raw model floor.

Not a timed test: run it by hand (a few minutes with the defaults)::

    .venv/bin/python bench/batch.py                  # 1,000,000 cards x 30 features
    .venv/bin/python bench/batch.py --rows 200000    # a quicker smoke run

It builds the fraud example in ``bench/.work/batch/`` (trains and registers ``fraud``, a
HistGradientBoostingClassifier), writes the input Parquet (generated in slices with
``generate_cards``; one row group per chunk), then measures, one after the other:

- the floor: ``predict_proba`` over the same rows, in chunks, on a process pool with the same
  number of workers (one thread each), the matrices already in memory: no I/O at all;
- ``hybridserve batch run`` end to end (read, validate, score, write both sinks, publish)
  with the SQLite prediction store, with Redis (a unique prefix, deleted afterwards), each
  once as a first run (it starts the forkserver and imports the model's libraries, as a
  ``batch run`` command does) and once more in the same process (the forkserver warm, as the
  floor's pool is), and twice through the scheduler (``serve --scheduler``'s path: the
  first run starts the job's runner process, the second finds it warm), with
  the Ray executor (once starting its own Ray, once on a Ray already running, as in a Ray
  deployment) and with the Spark executor (a local Spark, started by the run).

hybridserve's modules are compiled to bytecode first, as installing a wheel does (where
``PYTHONDONTWRITEBYTECODE`` is set an editable install would compile them from source again
in each new process a first run starts).

Peak memory is the largest sum of RSS (and of PSS) over this process and all its descendants
(pool workers, Ray's processes): RSS sampled every 50 ms and PSS every second during each run.
It writes the Batch section of ``docs/benchmarks.md`` (between ``<!-- batch:start -->`` and
``<!-- batch:end -->``) and prints a final ``RESULT key=value ...`` line.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from _batch import floor, report  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--chunk-rows", type=int, default=50_000)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    p.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "tl2cgen", "treelite", "none"],
        help="models.fraud.compile; with tl2cgen the floor also times the compiled trees",
    )
    p.add_argument(
        "--skip", nargs="*", default=[], choices=["sqlite", "scheduled", "redis", "ray", "spark"]
    )
    p.add_argument("--work", type=Path, default=REPO / "bench" / ".work" / "batch")
    p.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    return p.parse_args()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def tree_pids(root: int) -> list[int]:
    """``root`` and every descendant process."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


_PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(pids: list[int]) -> int:
    """Summed RSS in bytes (``/proc/PID/statm``: cheap enough to sample every 50 ms)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def tree_pss(pids: list[int]) -> int:
    """Summed PSS in bytes: each shared page divided among its sharers, so it adds up to real
    memory (RSS counts a page shared by forked workers or mapped libraries once per process).
    ``smaps_rollup`` walks every mapping, so it is sampled less often than RSS.
    """
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(pids: list[int], seen: dict[int, float]) -> None:
    """Record each process's CPU seconds so far (user + system) in ``seen``."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            seen[pid] = max(seen.get(pid, 0.0), (int(fields[11]) + int(fields[12])) / _TICK)
        except (OSError, IndexError, ValueError):
            pass


@contextmanager
def peak_memory() -> Iterator[list[float]]:
    """Sample the process tree while the block runs; yields [peak RSS, peak PSS] in bytes
    and, third, the CPU seconds the tree spent in the block.

    RSS and CPU every 50 ms and PSS every second (reading a big process's ``smaps_rollup``
    costs milliseconds of CPU, which the sampler would otherwise take from the run it
    measures). A process that ends between two samples loses up to 50 ms of CPU.
    """
    peak: list[float] = [0, 0, 0]
    stop = threading.Event()
    start: dict[int, float] = {}
    cpu: dict[int, float] = {}
    tree_cpu(tree_pids(os.getpid()), start)

    def sample() -> None:
        tick = 0
        pids = tree_pids(os.getpid())
        while not stop.is_set():
            if tick % 20 == 0:
                pids = tree_pids(os.getpid())
                peak[1] = max(peak[1], tree_pss(pids))
            if tick % 2 == 0:
                pids = tree_pids(os.getpid())
            peak[0] = max(peak[0], tree_rss(pids))
            tree_cpu(pids, cpu)
            tick += 1
            stop.wait(0.05)
        tree_cpu(tree_pids(os.getpid()), cpu)
        peak[2] = sum(t - start.get(pid, 0.0) for pid, t in cpu.items())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def build(args: argparse.Namespace) -> Path:
    """The fraud example with a trained model and a ``bench`` job over the generated input."""
    from hybridserve.config import load_project
    from hybridserve.examples.fraud import scaffold
    from hybridserve.examples.fraud.train import train

    work = args.work
    if work.exists():
        shutil.rmtree(work)
    scaffold(work, n_cards=1000)
    path = work / "hybridserve.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["models"]["fraud"]["compile"] = args.compile
    raw["batch_jobs"] = {
        "bench": {
            "route": "fraud",
            "input": {"path": "data/bench.parquet"},
            "chunk_rows": args.chunk_rows,
            "workers": args.workers,
            "schedule": "0 3 * * *",  # for the scheduled rows (the clock there is a fake)
        }
    }
    path.write_text(yaml.safe_dump(raw))
    log("training the fraud model")
    train(load_project(path))
    log(f"writing {args.rows:,} rows to data/bench.parquet")
    floor.write_input(work / "data" / "bench.parquet", args.rows, args.chunk_rows)
    return path


def redis_cpu(url: str | None) -> float:
    """The Redis server's CPU seconds so far (0 without Redis)."""
    if url is None:
        return 0.0
    import redis

    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure(
    name: str, rows: int, fn: Callable[[], Any], redis_url: str | None = None
) -> dict[str, Any]:
    log(f"{name}: running")
    server0 = redis_cpu(redis_url)
    with peak_memory() as peak:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    server = redis_cpu(redis_url) - server0
    result = {
        "name": name,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "peak_rss_mb": peak[0] / 2**20,
        "peak_pss_mb": peak[1] / 2**20,
        "cpu_us_per_row": (peak[2] + server) / rows * 1e6,
        "detail": out,
    }
    log(
        f"{name}: {seconds:.2f} s, {rows / seconds:,.0f} rows/s, "
        f"peak RSS {peak[0] / 2**20:,.0f} MB, PSS {peak[1] / 2**20:,.0f} MB, "
        f"CPU {result['cpu_us_per_row']:.1f} us/row"
        + (f" (Redis server {server / rows * 1e6:.1f})" if redis_url else "")
    )
    return result


def measure_floors(project: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The library's ``predict_proba``, and with ``--compile tl2cgen`` the compiled trees too."""
    model, chunks = floor.matrices(project, project.path("data/bench.parquet"), args.chunk_rows)
    out = [measure_floor(model, chunks, args)]
    if args.compile == "tl2cgen":
        out.append(measure_floor(model, chunks, args, str(project.base_dir / "hybridserve.yaml")))
    return out


def measure_floor(
    model: Any, chunks: list[Any], args: argparse.Namespace, project_file: str | None = None
) -> dict[str, Any]:
    name = "floor" if project_file is None else "floor_compiled"
    pool = floor.Floor(model, args.workers, project_file)
    try:
        return measure(name, args.rows, lambda: pool.score(chunks))
    finally:
        pool.close()


def compile_bytecode() -> None:
    """Compile hybridserve's modules to bytecode, as installing a wheel does. A first run's
    new processes (the forkserver, the job's runner) import them: where the environment sets
    ``PYTHONDONTWRITEBYTECODE`` (these machines do) an editable install has no bytecode, and
    each of those processes would compile every module from source again (about 0.2 s)."""
    import compileall

    import hybridserve

    compileall.compile_dir(Path(hybridserve.__file__).parent, quiet=1)


def cold_start() -> None:
    """Stop the forkserver a local run's workers fork from, so that the next run starts it and
    imports the model's libraries again, as a ``hybridserve batch run`` command (or a run the
    scheduler starts) does: without this the first store measured pays that start and the
    next finds the server warm. The ``*_warm`` rows are the second run in the same process."""
    from multiprocessing import forkserver

    forkserver._forkserver._stop()  # type: ignore[attr-defined]


def measure_scheduled(args: argparse.Namespace, project: Any) -> list[dict[str, Any]]:
    """The job through ``serve --scheduler``'s path (a fake clock a day further each time),
    twice: the first run starts the job's runner process, the second finds it warm."""
    import asyncio

    from hybridserve.batch.manifest import runs
    from hybridserve.batch.schedule import Scheduler

    loop = asyncio.new_event_loop()
    clock = [1_800_000_000.0]
    sched = Scheduler(project, clock=lambda: clock[0])
    loop.run_until_complete(sched.tick())  # learns when the job is next due

    def once() -> str:
        clock[0] += 86_400

        async def go() -> dict[str, Any]:
            assert await sched.tick() == ["bench"]
            handle = sched.running["bench"]
            assert await handle.wait() == 0, getattr(handle, "answer", None)
            return dict(getattr(handle, "answer", {}))

        answer = loop.run_until_complete(go())
        (m,) = [m for m in runs(project, "bench") if m.run_id == answer["run_id"]]
        assert m.total("scored") == args.rows, m.to_dict()
        return f"{m.total('scored'):,} scored, {m.total_chunks} chunks"

    try:
        return [measure(name, args.rows, once) for name in ("scheduled", "scheduled_warm")]
    finally:
        loop.run_until_complete(sched.close())
        loop.close()


def measure_on_running_ray(args: argparse.Namespace, run: Callable[[], Any]) -> dict[str, Any]:
    """The Ray executor on a Ray that is already up (as a Ray deployment is): ``ray.init``
    happens before the clock starts; the run still starts its actors and loads the model."""
    import logging

    import ray

    ray.init(
        num_cpus=args.workers,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        return measure("ray_running", args.rows, run)
    finally:
        ray.shutdown()


def main() -> int:
    args = parse_args()
    from hybridserve.batch import run_job
    from hybridserve.config import load_project

    compile_bytecode()
    project_file = build(args)
    project = load_project(project_file, env=False)
    results = measure_floors(project, args)  # its matrices are freed before the runs

    def batch(run_id: str, proj: Any, executor: str = "local") -> Callable[[], Any]:
        def go() -> str:
            m = run_job(proj, "bench", run_id=run_id, executor=executor)
            assert m.status == "completed" and m.total("scored") == args.rows, m.to_dict()
            return f"{m.total('scored'):,} scored, {m.total_chunks} chunks"

        return go

    if "sqlite" not in args.skip:
        cold_start()
        results.append(measure("sqlite", args.rows, batch("bench-sqlite", project)))
        results.append(measure("sqlite_warm", args.rows, batch("bench-sqlite-2", project)))
    if "scheduled" not in args.skip:
        results += measure_scheduled(args, project)
    if "redis" not in args.skip:
        prefix = f"hs-bench-{uuid.uuid4().hex[:8]}:"
        raw = yaml.safe_load(project_file.read_text())
        raw["stores"] = {**raw["stores"], "predictions": args.redis, "prefix": prefix}
        redis_file = project_file.with_name("redis.yaml")
        redis_file.write_text(yaml.safe_dump(raw))
        redis_project = load_project(redis_file, env=False)
        try:
            cold_start()
            for name, run_id in (("redis", "bench-redis"), ("redis_warm", "bench-redis-2")):
                results.append(
                    measure(name, args.rows, batch(run_id, redis_project), redis_url=args.redis)
                )
        finally:
            floor.delete_prefix(args.redis, prefix)
    if "ray" not in args.skip:
        results.append(measure("ray", args.rows, batch("bench-ray", project, "ray")))
        results.append(measure_on_running_ray(args, batch("bench-ray-running", project, "ray")))
    if "spark" not in args.skip:
        results.append(measure("spark", args.rows, batch("bench-spark", project, "spark")))

    command = "python bench/batch.py" + ("" if args.rows == 1_000_000 else f" --rows {args.rows}")
    if args.compile != "auto":
        command += f" --compile {args.compile}"
    section = report.section(
        results,
        rows=args.rows,
        chunk_rows=args.chunk_rows,
        workers=args.workers,
        compile=args.compile,
        command=command,
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        load=", ".join(f"{x:.1f}" for x in os.getloadavg()),
    )
    report.write(args.docs, section)
    by = {r["name"]: r for r in results}

    def rate(name: str) -> str:
        return f"{by[name]['rows_per_s']:.0f}" if name in by else "nan"

    runs = [r for r in results if not r["name"].startswith("floor")]
    peak = max((r["peak_rss_mb"] for r in runs), default=float("nan"))
    peak_pss = max((r["peak_pss_mb"] for r in runs), default=float("nan"))

    def vs_local(name: str) -> str:
        if name not in by or "sqlite" not in by:
            return "nan"
        return f"{by[name]['rows_per_s'] / by['sqlite']['rows_per_s']:.2f}"

    print(
        f"RESULT rows={args.rows} floor_rows_per_s={rate('floor')} "
        f"floor_compiled_rows_per_s={rate('floor_compiled')} "
        f"sqlite_rows_per_s={rate('sqlite')} redis_rows_per_s={rate('redis')} "
        f"sqlite_warm_rows_per_s={rate('sqlite_warm')} redis_warm_rows_per_s={rate('redis_warm')} "
        f"scheduled_rows_per_s={rate('scheduled')} "
        f"scheduled_warm_rows_per_s={rate('scheduled_warm')} "
        f"ray_rows_per_s={rate('ray')} ray_running_rows_per_s={rate('ray_running')} "
        f"spark_rows_per_s={rate('spark')} ray_vs_local={vs_local('ray')} "
        f"ray_running_vs_local={vs_local('ray_running')} spark_vs_local={vs_local('spark')} "
        f"peak_rss_mb={peak:.0f} peak_pss_mb={peak_pss:.0f} "
        + " ".join(f"{r['name']}_cpu_us_per_row={r['cpu_us_per_row']:.1f}" for r in results)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
