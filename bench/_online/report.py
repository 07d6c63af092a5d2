"""The report: the Markdown section of ``docs/benchmarks.md`` and the final ``RESULT`` line.

Only the text between ``<!-- online:start -->`` and ``<!-- online:end -->`` is replaced; the
file and the markers are created when absent, and every other section is kept as it is.
"""

from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from _online.loadgen import LoadResult
from _online.openloop import OpenLoopResult

START = "<!-- online:start -->"
END = "<!-- online:end -->"


@dataclass(slots=True)
class ServerResult:
    """Every point measured for one server, plus what its answers said about themselves."""

    key: str
    label: str
    points: dict[int, LoadResult] = field(default_factory=dict)
    source: str = ""
    """Where a sample answer came from (hybridserve's ``source``), or another short fact."""
    note: str = ""
    overload: OpenLoopResult | None = None
    """The open-loop point, for the servers it was run on."""


def machine() -> str:
    """``lscpu``'s model name and the number of CPUs."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in out.splitlines())
    )
    return f"{fields.get('Model name', 'unknown')}, {fields.get('CPU(s)', '?')} cores"


def _num(x: float, digits: int = 2) -> str:
    return "nan" if math.isnan(x) else f"{x:,.{digits}f}"


def table(results: list[ServerResult], concurrency: list[int]) -> str:
    """The results table: one row per server, rps / p50 / p99 per concurrency."""
    head = ["server"]
    for c in concurrency:
        head += [f"c={c} rps", f"c={c} p50 ms", f"c={c} p99 ms"]
    head.append(f"CPU us/answer (c={concurrency[-1]})")
    head.append("answered from (source mix per concurrency)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.label]
        for c in concurrency:
            p = r.points.get(c, LoadResult.failed())
            rps = _num(p.rps, 0)
            if p.degraded() > 0:
                rps += f" ({_num(p.rps * (1 - p.degraded()), 0)} not degraded)"
            cells += [rps, _num(p.p50_ms), _num(p.p99_ms)]
        cells.append(_num(r.points.get(concurrency[-1], LoadResult.failed()).cpu_us, 0))
        mixes = [f"c={c}: {r.points[c].mix()}" for c in concurrency if c in r.points]
        cells.append("; ".join(m for m in mixes if not m.endswith(": ")) or r.source or "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def overload_table(results: list[ServerResult], budget_ms: float) -> str:
    """The open-loop points: one row per server it ran on (empty when none)."""
    rows = [r for r in results if r.overload is not None]
    if not rows:
        return ""
    head = [
        "server", "offered rps", "achieved rps", f"200 within {budget_ms:g} ms",
        "shed 429/503", "other", f"answers later than {budget_ms + 20:g} ms", "p99 ms",
        "max ms", "shed p99 ms", "200s degraded",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        o = r.overload
        assert o is not None
        cells = [
            r.label, _num(o.offered_rps, 0), _num(o.achieved_rps, 0),
            f"{_num(o.in_budget_pct, 1)}%",
            f"{_num(o.shed_pct, 1)}%", f"{_num(o.other_pct, 1)}%", f"{o.late:,}",
            _num(o.p99_ms), _num(o.max_ms), _num(o.shed_p99_ms), f"{_num(o.degraded_pct, 1)}%",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section(
    *,
    date: str,
    command: str,
    results: list[ServerResult],
    concurrency: list[int],
    duration: float,
    warmup: float,
    model_ms: float,
    model_p99_ms: float,
    compiler: str,
    n_cards: int,
    notes: list[str],
    budget_ms: float = 50.0,
    overload_factor: float = 3.0,
    overload_seconds: float = 15.0,
    overload_clients: int = 600,
) -> str:
    """The whole Online section, markers included."""
    body = [
        START,
        "## Online",
        "",
        f"- date: {date}",
        f"- machine: {machine()}",
        f"- command: `{command}`",
        f"- each point: {duration:g} s after a {warmup:g} s warm-up at the same concurrency; "
        "wrk (1 thread, closed loop) pinned to core 1, each server pinned to core 0 "
        "(one process or worker)",
        f"- model: `fraud@production` of the fraud example (HistGradientBoostingClassifier, "
        f"30 features); in-process `predict_proba` on one row: median {_num(model_ms, 3)} ms, "
        f"p99 {_num(model_p99_ms, 3)} ms; hybridserve's servers score it through "
        f"`{compiler}` (`models.fraud.compile: auto`; `none` is scikit-learn's own predict)",
        f"- requests: one entity each, rotating over {n_cards:,} cards in random order; "
        "(a), (b), (c) and (e) receive identical bodies with all 30 features",
        "",
        table(results, concurrency),
        "",
    ]
    overload = overload_table(results, budget_ms)
    if overload:
        body += [
            f"Open loop (h2load, {overload_clients} connections at a fixed total rate of "
            f"{overload_factor:g}x the server's c=64 rate, {overload_seconds:g} s, pinned to "
            "core 1; the connections open over the first second, so that their request "
            "timers do not tick together): every request is sent on schedule whatever the "
            "server answers; a connection waits for its answer before its next request, so "
            '"achieved" falls below "offered" when answers are slow.',
            "",
            overload,
            "",
        ]
    body += [
        "How each server answers:",
        "",
        "- (a) bare ASGI app on uvicorn (uvloop, httptools, one worker): reads the body, returns "
        "a constant JSON. The HTTP floor of a Python server on this machine. (a') the same on "
        "granian's RSGI interface (one worker, single-threaded runtime).",
        "- (b) the same kind of app, parsing the JSON, building a 1x30 numpy row and calling "
        "`predict_proba` inline: one model call per request.",
        "- (c) mosec (own virtualenv, same scikit-learn and model file): one worker, dynamic "
        "batching up to 64 requests with a 2 ms wait.",
        "- (d) `hybridserve serve`, route `fraud`, entity key only, default mode `auto`: a "
        "stored (precomputed, fresh) prediction for every card; repeats hit the L1 cache.",
        "- (e) `hybridserve serve`, route `fraud_req` (all 30 features declared as request "
        'features), `"mode": "compute"`: every answer computed now through the micro-batcher.',
        '- (f) `hybridserve serve`, route `fraud`, entity key only, `"mode": "compute"`: '
        "features read from the online store (SQLite), then computed now.",
        "- (g) `hybridserve serve --grpc-port`, the Open Inference Protocol's gRPC `ModelInfer` "
        "on model `fraud`: the same 30 features as one raw FP64 `[1, 30]` tensor, computed now "
        "through the same micro-batcher; load from `bench/_online/grpc_load.py` (grpc.aio "
        "callers on one channel, closed loop) pinned to core 1 instead of wrk.",
        "- (d') and (e'): (d) and (e) with `serve --http granian` (predict answered over RSGI).",
        "- (d''): (d) with OpenTelemetry tracing on (`OTEL_EXPORTER_OTLP_ENDPOINT` set, "
        "`parentbased_traceidratio` at 0.01), exporting to a sink in the bench process.",
        "",
        "CPU us/answer: the server's user + system CPU time over the measured seconds (all its "
        "processes, from `/proc`; mosec's Rust front and Python worker together), divided by "
        "the answers.",
        "",
        "rps counts 2xx answers, including degraded ones (a fallback answered); the share not "
        "degraded is given in brackets when some were. Latency percentiles are wrk's (closed "
        "loop, so they do not include the queueing a fixed-rate client would see).",
    ]
    if notes:
        body += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    body.append(END)
    return "\n".join(body)


def write_section(doc: Path, text: str) -> None:
    """Replace the Online section of ``doc`` (or add it, creating the file if needed)."""
    old = doc.read_text() if doc.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    if pattern.search(old):
        new = pattern.sub(lambda _m: text, old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(new)


def degraded_line(results: dict[str, ServerResult]) -> str:
    """``DEGRADED key=percent ...``: share of fallback or non-200 answers per hybridserve point."""
    pairs = [
        f"c{c}_{key}_pct={100 * p.degraded():.1f}"
        for key in ("stored", "online", "entity", "grpc")
        if key in results
        for c, p in sorted(results[key].points.items())
    ]
    return "DEGRADED " + (" ".join(pairs) or "none-measured")


def result_line(results: dict[str, ServerResult], model_ms: float, compiler: str) -> str:
    """The final ``RESULT key=value ...`` line (``nan`` for anything not measured)."""

    def get(key: str, c: int, attr: str) -> float:
        r = results.get(key)
        p = r.points.get(c) if r else None
        return float(getattr(p, attr)) if p else math.nan

    def f(x: float, digits: int) -> str:
        return "nan" if math.isnan(x) else f"{x:.{digits}f}"

    pairs = [
        ("floor_rps", f(get("floor", 64, "rps"), 0)),
        ("naive_rps", f(get("naive", 64, "rps"), 0)),
        ("mosec_rps", f(get("mosec", 64, "rps"), 0)),
        ("mosec_p99_ms", f(get("mosec", 64, "p99_ms"), 2)),
        ("model_1row_ms", f(model_ms, 3)),
        ("compiler", compiler),
        ("c64_stored_rps", f(get("stored", 64, "rps"), 0)),
        ("c64_stored_p99_ms", f(get("stored", 64, "p99_ms"), 2)),
        ("c64_online_rps", f(get("online", 64, "rps"), 0)),
        ("c64_online_p99_ms", f(get("online", 64, "p99_ms"), 2)),
        ("c64_entity_rps", f(get("entity", 64, "rps"), 0)),
        ("c1_online_p50_ms", f(get("online", 1, "p50_ms"), 2)),
        ("c64_stored_granian_rps", f(get("stored_granian", 64, "rps"), 0)),
        ("c64_online_granian_rps", f(get("online_granian", 64, "rps"), 0)),
        ("c64_grpc_rps", f(get("grpc", 64, "rps"), 0)),
        ("c64_grpc_p99_ms", f(get("grpc", 64, "p99_ms"), 2)),
        ("c1_grpc_p50_ms", f(get("grpc", 1, "p50_ms"), 2)),
        ("c1_naive_p50_ms", f(get("naive", 1, "p50_ms"), 2)),
        ("granian_floor_rps", f(get("floor_granian", 64, "rps"), 0)),
        ("stored_cpu_us", f(get("stored", 64, "cpu_us"), 0)),
        ("online_cpu_us", f(get("online", 64, "cpu_us"), 0)),
        ("stored_granian_cpu_us", f(get("stored_granian", 64, "cpu_us"), 0)),
        ("online_granian_cpu_us", f(get("online_granian", 64, "cpu_us"), 0)),
        ("mosec_cpu_us", f(get("mosec", 64, "cpu_us"), 0)),
        ("c64_stored_traced_rps", f(get("stored_traced", 64, "rps"), 0)),
    ]
    for key in ("online", "online_granian"):
        o = results[key].overload if key in results else None
        if o is not None:
            pairs += [
                (f"overload_{key}_offered_rps", f(o.offered_rps, 0)),
                (f"overload_{key}_in_budget_pct", f(o.in_budget_pct, 1)),
                (f"overload_{key}_shed_pct", f(o.shed_pct, 1)),
                (f"overload_{key}_late", str(o.late)),
                (f"overload_{key}_p99_ms", f(o.p99_ms, 2)),
                (f"overload_{key}_max_ms", f(o.max_ms, 2)),
            ]
    return "RESULT " + " ".join(f"{k}={v}" for k, v in pairs)
