"""The Batch section of ``docs/benchmarks.md``, between its markers (the rest is kept)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

START, END = "<!-- batch:start -->", "<!-- batch:end -->"
LABELS = {
    "floor": "floor: `predict_proba` on a process pool, matrices in memory, no I/O",
    "floor_compiled": "floor: the compiled trees (`compile: tl2cgen`) on a process pool, no I/O",
    "sqlite": "hybridserve `batch run`, local executor, SQLite store (a first run)",
    "sqlite_warm": "the same, a second run in the same process (forkserver warm)",
    "scheduled": "a scheduled run (`serve --scheduler`), SQLite store: the first, which starts "
    "the job's runner process",
    "scheduled_warm": "the job's next scheduled run (its runner warm)",
    "redis": "hybridserve `batch run`, local executor, Redis store (a first run)",
    "redis_warm": "the same, a second run in the same process (forkserver warm)",
    "ray": "hybridserve `batch run`, Ray executor (actor pool, starts its own Ray), SQLite store",
    "ray_running": "hybridserve `batch run`, Ray executor on a Ray already running, SQLite store",
    "spark": "hybridserve `batch run`, Spark executor (local Spark, mapInArrow), SQLite store",
}


def section(results: list[dict[str, Any]], **info: Any) -> str:
    # The share is of the fastest floor in the run: with compiled trees, of the compiled ones.
    floor = max((r["rows_per_s"] for r in results if r["name"].startswith("floor")), default=None)
    lines = [
        START,
        "## Batch",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['machine']}",
        f"- command: `{info['command']}`",
        f"- input: {info['rows']:,} cards x 30 features (Parquet, one row group per "
        f"{info['chunk_rows']:,}-row chunk); model `fraud@production` "
        "(HistGradientBoostingClassifier); "
        f"{info['workers']} workers, one model thread each; `compile: {info['compile']}`",
        "- end to end = plan and read the input, validate, score, write every record to the "
        "prediction store and a Parquet snapshot per chunk, manifest, publish; the wall time "
        "includes starting the pool (or Ray, or Spark's JVM) and loading the model; a first run "
        "also starts the forkserver the workers fork from, which imports the model's libraries "
        "(as every `batch run` command does), a second run in the same process finds it warm; "
        "the floor's pool is started and warmed before its clock starts",
        "- peak memory: RSS and PSS summed over this process and all its descendants (pool "
        "workers, the forkserver, Ray's processes): RSS sampled every 50 ms, PSS every "
        "second; RSS counts a page shared by N processes N times, PSS once",
        "- the machine is a shared VM whose speed varies from run to run (load average "
        f"{info['load']}); compare the rows of one run, as ratios",
        "- CPU us/row: CPU seconds of the process tree (and, for Redis, of the Redis server) "
        "per row",
        "",
        "| run | seconds | rows/s | share of the fastest floor | CPU us/row | peak RSS MB "
        "| peak PSS MB "
        "| detail |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        share = "" if not floor else f"{r['rows_per_s'] / floor:.0%}"
        lines.append(
            f"| {LABELS.get(r['name'], r['name'])} | {r['seconds']:.2f} | "
            f"{r['rows_per_s']:,.0f} | {share} | {r.get('cpu_us_per_row', float('nan')):.1f} | "
            f"{r['peak_rss_mb']:,.0f} | "
            f"{r['peak_pss_mb']:,.0f} | {r['detail']} |"
        )
    lines += ["", END]
    return "\n".join(lines)


def write(path: Path, text: str) -> None:
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in old and END in old:
        head, rest = old.split(START, 1)
        new = head + text + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)
