"""Online-serving benchmark: hybridserve against the HTTP floor, a naive server and mosec.

Not a timed test: run it by hand (it takes about 4 minutes with the defaults)::

    .venv/bin/python bench/online.py                 # 15 s points after a 3 s warm-up
    .venv/bin/python bench/online.py --quick         # 3 s points, for smoke runs

It builds the fraud example in ``bench/.work/`` (trains and registers ``fraud``, materializes the
``card_profile`` view, stores a precomputed prediction for every card), then measures seven servers
one after the other, each pinned to core 0 while wrk runs pinned to core 1, at concurrency 1 and
64:

(a) ``floor``: a bare ASGI app on uvicorn (uvloop, httptools, one worker), constant JSON;
(b) ``naive``: the same kind of app calling the model's ``predict_proba`` inline per request;
(c) ``mosec``: one worker, dynamic batching up to 64 with a 2 ms wait (own virtualenv,
    ``bench/.venv-mosec``, created on first use with the same scikit-learn);
(d) ``stored``: ``hybridserve serve``, answers from stored predictions (mode ``auto``);
(e) ``online``: ``hybridserve serve``, features in the request, ``mode: compute``;
(f) ``entity``: ``hybridserve serve``, entity keys only, features from the online store,
    ``mode: compute``;
(g) ``grpc``: ``hybridserve serve --grpc-port``, the Open Inference Protocol's gRPC
    ``ModelInfer`` with the 30 features as one raw FP64 tensor, computed now; the load comes
    from ``_online/grpc_load.py`` (grpc.aio callers on one channel) pinned to core 1.

It also times the model's own ``predict_proba`` on one row in-process, and names the compiler
hybridserve scores the model through (``models.fraud.compile``, see ``runtimes/compiled.py``).
It writes the Online section of ``docs/benchmarks.md`` (between ``<!-- online:start -->`` and
``<!-- online:end -->``) and prints a final ``RESULT key=value ...`` line. A server that cannot
run here (for example while ``hybridserve serve`` does not exist yet) is reported as ``nan`` with
the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _online import loadgen, openloop, report, servers
from _online.project import ROUTE, BenchProject, build

REPO = Path(__file__).resolve().parent.parent
BUDGET_MS = 50.0  # the bench routes' latency_budget (bench/_online/project.py)
SERVER_CORE = 0
CLIENT_CORE = 1
ALL_SERVERS = [
    "floor", "floor_granian", "naive", "mosec", "stored", "online", "entity", "stored_granian",
    "online_granian", "stored_traced", "grpc",
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=15.0, help="seconds per point (15)")
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per point (3)")
    p.add_argument("--quick", action="store_true", help="3 s points, 1 s warm-up (smoke runs)")
    p.add_argument("--concurrency", default="1,64", help="comma-separated connection counts (1,64)")
    p.add_argument(
        "--servers",
        default=",".join(ALL_SERVERS),
        help=f"comma-separated subset of {','.join(ALL_SERVERS)}",
    )
    p.add_argument("--cards", type=int, default=5000, help="cards in the bench project (5000)")
    p.add_argument("--model-calls", type=int, default=2000, help="single-row model calls (2000)")
    p.add_argument(
        "--work-dir", type=Path, default=REPO / "bench" / ".work", help="scratch directory"
    )
    p.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md", help="report file")
    p.add_argument("--no-docs", action="store_true", help="do not write the report file")
    p.add_argument(
        "--no-install", action="store_true", help="do not create bench/.venv-mosec if missing"
    )
    p.add_argument(
        "--overload",
        default="online,online_granian",
        help="servers given the open-loop point (online,online_granian; empty: none)",
    )
    p.add_argument(
        "--overload-factor", type=float, default=3.0, help="offered rate / c=64 rate (3)"
    )
    p.add_argument("--overload-seconds", type=float, default=15.0, help="open-loop seconds (15)")
    p.add_argument("--overload-clients", type=int, default=600, help="h2load connections (600)")
    args = p.parse_args(argv)
    args.overload = [s for s in str(args.overload).split(",") if s]
    if args.quick:
        args.duration, args.warmup = 3.0, 1.0
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c]
    args.servers = [s for s in str(args.servers).split(",") if s]
    unknown = set(args.servers) - set(ALL_SERVERS)
    if unknown:
        p.error(f"unknown servers: {', '.join(sorted(unknown))}")
    return args


def log(message: str) -> None:
    """Progress on stderr, so stdout ends with the RESULT line."""
    print(f"[online] {message}", file=sys.stderr, flush=True)


def time_model(bench: BenchProject, calls: int) -> tuple[float, float]:
    """Median and p99 ms of one-row ``predict_proba`` in-process, pinned to the server core."""
    proc = subprocess.run(
        [
            "taskset", "-c", str(SERVER_CORE), str(servers.VENV_PYTHON),
            str(servers.HERE / "model_timing.py"),
            str(bench.model_path), str(bench.rows_path), str(calls),
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(data["median_ms"]), float(data["p99_ms"])


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores other processes keep busy now (from ``/proc/stat``; nothing of ours runs)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    if total1 == total0:
        return 0.0
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / (total1 - total0))


def describe(spec: servers.ServerSpec, status: int, answer: object) -> str:
    """A short 'answered from' fact from a sample answer (hybridserve's ``source``)."""
    if status != 200:
        return f"HTTP {status}"
    if isinstance(answer, dict) and isinstance(answer.get("predictions"), list):
        preds = answer["predictions"]
        if preds and isinstance(preds[0], dict):
            return str(preds[0].get("source", "?"))
    return "constant" if spec.key.startswith("floor") else "model"


def load(spec: servers.ServerSpec, port: int, c: int, seconds: float) -> loadgen.LoadResult:
    """One point from the client core: wrk for HTTP servers, grpc_load for gRPC."""
    if spec.grpc_port is not None:
        return loadgen.run_grpc(
            spec.grpc_port, ROUTE, spec.bodies, concurrency=c, seconds=seconds, core=CLIENT_CORE
        )
    return loadgen.run_wrk(
        port, spec.path, spec.bodies, concurrency=c, seconds=seconds, core=CLIENT_CORE
    )


def overload(
    spec: servers.ServerSpec, port: int, rate: float, args: argparse.Namespace
) -> openloop.OpenLoopResult:
    """The open-loop point at ``args.overload_factor`` times the closed-loop c=64 rate."""
    try:
        o = openloop.run(
            port,
            spec.path,
            servers.first_line(spec.bodies),
            rate=args.overload_factor * rate,
            seconds=args.overload_seconds,
            budget_ms=BUDGET_MS,
            core=CLIENT_CORE,
            clients=args.overload_clients,
        )
    except Exception as exc:
        log(f"{spec.key} open loop: failed: {exc}")
        return openloop.OpenLoopResult.failed()
    log(
        f"{spec.key} open loop at {o.offered_rps:,.0f} rps offered ({o.achieved_rps:,.0f} sent): "
        f"{o.in_budget_pct:.1f}% 200 within {BUDGET_MS:g} ms, {o.shed_pct:.1f}% shed, "
        f"{o.other_pct:.1f}% other, {o.late} later than {BUDGET_MS + 20:g} ms, "
        f"p99 {o.p99_ms:.1f} ms, max {o.max_ms:.1f} ms, {o.degraded_pct:.1f}% of 200s degraded"
    )
    return o


def measure(spec: servers.ServerSpec, args: argparse.Namespace, logs: Path) -> report.ServerResult:
    """Start one server, measure every concurrency, stop it."""
    result = report.ServerResult(spec.key, spec.label)
    if spec.unavailable:
        result.note = spec.unavailable
        log(f"{spec.key}: skipped ({spec.unavailable})")
        return result
    try:
        with servers.RunningServer(spec, core=SERVER_CORE, log=logs / f"{spec.key}.log") as srv:
            status, answer = srv.probe()
            result.source = describe(spec, status, answer)
            if status != 200:
                result.note = f"sample request answered HTTP {status}: {str(answer)[:200]}"
                log(f"{spec.key}: {result.note}")
                return result
            if spec.key == "stored" and result.source not in ("cache", "batch"):
                result.note = f"expected a stored prediction, got source {result.source!r}"
            for c in args.concurrency:
                if args.warmup > 0:
                    load(spec, srv.port, c, args.warmup)
                cpu0 = srv.cpu_seconds()
                point = load(spec, srv.port, c, args.duration)
                spent = srv.cpu_seconds() - cpu0
                if point.requests:
                    point = dataclasses.replace(point, cpu_us=1e6 * spent / point.requests)
                result.points[c] = point
                log(
                    f"{spec.key} c={c}: {point.rps:,.0f} rps, p50 {point.p50_ms:.2f} ms, "
                    f"p99 {point.p99_ms:.2f} ms, errors {point.errors}"
                    + (f", answers: {point.mix()}" if point.mix() else "")
                )
                if point.degraded() > 0:
                    result.note = (result.note + "; " if result.note else "") + (
                        f"c={c}: {100 * point.degraded():.1f}% of answers degraded "
                        "(fallback or non-200), counted in rps"
                    )
                if point.errors:
                    result.note = (result.note + "; " if result.note else "") + (
                        f"c={c}: {point.errors} errors of {point.requests} requests"
                    )
            if spec.key in args.overload and 64 in result.points:
                result.overload = overload(spec, srv.port, result.points[64].rps, args)
    except Exception as exc:  # one broken server must not lose the others' numbers
        result.points.clear()
        result.note = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        log(f"{spec.key}: {result.note}")
        traceback.print_exc(file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    """Build the project, measure the servers, write the report, print the RESULT line."""
    args = parse_args(argv)
    if loadgen.wrk_path() is None:
        log("wrk not found: apt-get update && apt-get install -y wrk")
        return 2
    started = datetime.now(UTC)
    work: Path = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    log(f"building the bench project in {work}")
    t0 = time.monotonic()
    bench = build(work, n_cards=args.cards)
    log(f"project ready in {time.monotonic() - t0:.1f} s: {'; '.join(bench.notes) or 'ok'}")

    import joblib
    import sklearn

    mosec_missing = None
    if "mosec" in args.servers:
        mosec_missing = servers.mosec_env_problem(
            sklearn.__version__, joblib.__version__, create=not args.no_install
        )
    sink = servers.TraceSink() if "stored_traced" in args.servers else None
    specs = [
        s
        for s in servers.specs(bench, mosec_missing, sink.port if sink else None)
        if s.key in args.servers
    ]

    model_ms, model_p99 = time_model(bench, args.model_calls)
    log(f"model predict_proba, one row: median {model_ms:.3f} ms, p99 {model_p99:.3f} ms")
    log(f"hybridserve scores it through: {bench.compiler}")

    results = []
    background = []
    for spec in specs:
        background.append(busy_cores())
        results.append(measure(spec, args, work / "logs"))

    if sink is not None:
        sink.__exit__(None, None, None)
    notes = list(bench.notes)
    if max(background) > 0.2:
        notes.append(
            "the machine was not idle: other processes kept "
            f"{min(background):.2f}-{max(background):.2f} of the 2 cores busy just before "
            "the servers started, so figures are noisy"
        )
    notes += [f"{r.label}: {r.note}" for r in results if r.note]
    if args.quick:
        notes.append("quick run (3 s points): a smoke test, not for comparison")
    command = "python bench/online.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = report.section(
        date=started.strftime("%Y-%m-%d %H:%M UTC"),
        command=command.strip(),
        results=results,
        concurrency=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        model_ms=model_ms,
        model_p99_ms=model_p99,
        compiler=bench.compiler,
        n_cards=bench.n_cards,
        notes=notes,
        budget_ms=BUDGET_MS,
        overload_factor=args.overload_factor,
        overload_seconds=args.overload_seconds,
        overload_clients=args.overload_clients,
    )
    print(report.table(results, args.concurrency))
    for n in notes:
        print(f"note: {n}")
    if not args.no_docs:
        report.write_section(args.docs, text)
        log(f"wrote the Online section of {args.docs}")
    by_key = {r.key: r for r in results}
    print(report.degraded_line(by_key))
    print(report.result_line(by_key, model_ms, bench.compiler))
    measured = [p for r in results for p in r.points.values() if not math.isnan(p.rps)]
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
