"""The load generators: wrk (HTTP) and ``grpc_load.py`` (gRPC), each pinned to its own core.

``post.lua`` rotates through a file of request bodies (one per line) and prints a
``WRK_RESULT {json}`` line from wrk's ``done()`` hook; :func:`run_wrk` parses that line.
wrk is a closed-loop generator: ``concurrency`` connections, each sending its next request
when the previous answer arrives. :func:`run_grpc` runs ``grpc_load.py`` (``concurrency``
closed-loop callers of ``ModelInfer`` on one channel) in a process of its own the same way.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LUA = Path(__file__).resolve().with_name("post.lua")
GRPC_LOAD = Path(__file__).resolve().with_name("grpc_load.py")
WRK_TIMEOUT_S = 10


@dataclass(frozen=True, slots=True)
class LoadResult:
    """One measured point."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    """Socket errors, timeouts and non-2xx/3xx answers."""
    sources: dict[str, int] = field(default_factory=dict)
    """Answers by their first prediction's ``source`` (``-``: none; ``http_<status>``: not 200)."""
    cpu_us: float = math.nan
    """The server's CPU time (user + system, all its processes) per answer, in microseconds."""

    def mix(self) -> str:
        """The source mix as text, e.g. ``online 97%, fallback:default 3%`` (empty if none)."""
        total = sum(self.sources.values())
        named = {k: v for k, v in self.sources.items() if k != "-"}
        if not total or not named:
            return ""
        ranked = sorted(self.sources.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in ranked)

    def degraded(self) -> float:
        """Share of answers that were not 200 or came from a fallback."""
        total = sum(self.sources.values())
        bad = sum(v for k, v in self.sources.items() if k.startswith(("fallback", "http_")))
        return bad / total if total else 0.0

    @classmethod
    def failed(cls) -> LoadResult:
        """A point that could not be measured (all figures ``nan``)."""
        nan = math.nan
        return cls(0, 0.0, nan, nan, nan, nan, nan, 0)


def wrk_path() -> str | None:
    """The ``wrk`` executable, if installed (``apt-get install -y wrk``)."""
    return shutil.which("wrk")


def run_wrk(
    port: int, path: str, bodies: Path, *, concurrency: int, seconds: float, core: int
) -> LoadResult:
    """Run wrk for ``seconds`` with ``concurrency`` connections on one thread pinned to ``core``."""
    wrk = wrk_path()
    if wrk is None:
        raise RuntimeError("wrk not found: apt-get update && apt-get install -y wrk")
    argv = [
        "taskset", "-c", str(core), wrk,
        "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
        f"--timeout={WRK_TIMEOUT_S}s", "-s", str(LUA),
        f"http://127.0.0.1:{port}", "--", str(bodies), path,
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    for line in proc.stdout.splitlines():
        if line.startswith("WRK_RESULT "):
            data = json.loads(line.removeprefix("WRK_RESULT "))
            break
    else:
        raise RuntimeError(f"wrk printed no result (rc {proc.returncode}): {proc.stderr[-500:]}")
    errors = sum(
        data[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts", "non_2xx")
    )
    return _result(data, ok=data["requests"] - data["non_2xx"], errors=errors)


def _result(data: dict[str, Any], *, ok: int, errors: int) -> LoadResult:
    """A load generator's ``*_RESULT`` figures (microseconds) as a :class:`LoadResult`."""
    secs = data["duration_us"] / 1e6
    return LoadResult(
        requests=data["requests"],
        seconds=secs,
        rps=ok / secs if secs > 0 else math.nan,
        p50_ms=data["p50_us"] / 1e3,
        p90_ms=data["p90_us"] / 1e3,
        p99_ms=data["p99_us"] / 1e3,
        max_ms=data["max_us"] / 1e3,
        errors=errors,
        sources={str(k): int(v) for k, v in data.get("sources", {}).items()},
    )


def run_grpc(
    port: int, model: str, rows: Path, *, concurrency: int, seconds: float, core: int
) -> LoadResult:
    """Run ``grpc_load.py`` for ``seconds`` with ``concurrency`` callers, pinned to ``core``."""
    argv = [
        "taskset", "-c", str(core), sys.executable, str(GRPC_LOAD),
        f"127.0.0.1:{port}", str(rows), model, str(concurrency), str(seconds),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    for line in proc.stdout.splitlines():
        if line.startswith("GRPC_RESULT "):
            data = json.loads(line.removeprefix("GRPC_RESULT "))
            break
    else:
        raise RuntimeError(
            f"grpc_load printed no result (rc {proc.returncode}): {proc.stderr[-500:]}"
        )
    return _result(data, ok=data["requests"] - data["not_ok"], errors=data["not_ok"])
