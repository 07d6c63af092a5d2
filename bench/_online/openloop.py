"""The open-loop overload point: a fixed offered rate, whatever the server answers.

wrk is closed-loop (a connection sends its next request only after the answer), so it cannot
overload a server: it slows down with it. Here h2load (Debian package ``nghttp2-client``) runs
``clients`` HTTP/1.1 connections, each sending at ``rate / clients`` requests per second
(``rate x seconds`` requests in all; the connections open one by one over the first second, see
``run``), pinned to the client core, and writes one line per request (start time, status,
microseconds to the end of the answer). With many connections each one sends far less often
than an answer takes, so the offered rate holds while the server is overloaded; the achieved
rate is reported beside the offered one, so a generator that could not keep up is visible.

From those lines: the share answered 200 within the latency budget, the share shed fast (429 or
503), everything else, and the p99 and the maximum of answer times. The server's own counters
(``hybridserve_requests_total`` by source, read from ``/metrics`` before and after) give how
many 200s were degraded (a fallback answered).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from _online import servers


@dataclass(frozen=True, slots=True)
class OpenLoopResult:
    offered_rps: float
    achieved_rps: float
    requests: int
    in_budget_pct: float
    """200 answers within the latency budget, of all requests sent."""
    shed_pct: float
    """429 and 503 answers, of all requests sent."""
    other_pct: float
    """Everything else: other statuses, answers after the budget, requests never answered."""
    late: int
    """Answers (of any status) that came later than the budget + 20 ms."""
    p99_ms: float
    max_ms: float
    shed_p99_ms: float
    degraded_pct: float
    """Of the 200 answers, the share a fallback gave (from the server's counters)."""

    @classmethod
    def failed(cls) -> OpenLoopResult:
        nan = math.nan
        return cls(nan, nan, 0, nan, nan, nan, 0, nan, nan, nan, nan)


def h2load_path() -> str | None:
    return shutil.which("h2load")


def _answers_by_source(port: int) -> dict[str, float]:
    status, body = servers.http(port, "/metrics", timeout=10.0)
    out: dict[str, float] = {}
    if status != 200:
        return out
    pattern = re.compile(r'^hybridserve_requests_total\{[^}]*source="([^"]+)"[^}]*\} (\S+)$')
    for line in body.decode().splitlines():
        m = pattern.match(line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(
    port: int,
    path: str,
    body: bytes,
    *,
    rate: float,
    seconds: float,
    budget_ms: float,
    core: int,
    clients: int = 600,
) -> OpenLoopResult:
    exe = h2load_path()
    if exe is None:
        raise RuntimeError("h2load not found: apt-get install -y nghttp2-client")
    before = _answers_by_source(port)
    with tempfile.TemporaryDirectory() as tmp:
        data, log = Path(tmp) / "body.json", Path(tmp) / "requests.tsv"
        data.write_bytes(body)
        # Connections are opened over the first second (1% every 10 ms), so that each one's
        # request timer ticks at its own phase: started together (``-D``), all of them send
        # at the same instant, and the offered load is a burst of ``clients`` requests every
        # ``clients / rate`` seconds instead of a rate. Measured on the bare HTTP floor app at
        # 600 rps over 600 connections: p50 38.6 ms in bursts, 0.87 ms staggered.
        per_tick = max(1, clients // 100)
        argv = [
            "taskset", "-c", str(core), exe, "--h1", "-t", "1", "-c", str(clients),
            "-r", str(per_tick), "--rate-period", "10ms",
            "--rps", f"{rate / clients:.3f}", "-n", str(int(rate * seconds)), "-d", str(data),
            "-H", "content-type: application/json", f"--log-file={log}",
            f"http://127.0.0.1:{port}{path}",
        ]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        if proc.returncode != 0 and not log.exists():
            raise RuntimeError(f"h2load failed: {proc.stderr.strip()[:300]}")
        rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    after = _answers_by_source(port)
    sent = _started(proc.stdout) or len(rows)
    times = [int(r[2]) / 1000 for r in rows]
    statuses = [int(r[1]) for r in rows]
    pairs = list(zip(statuses, times, strict=True))
    ok_in_budget = sum(1 for s, t in pairs if s == 200 and t <= budget_ms)
    shed = [t for s, t in pairs if s in (429, 503)]
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    answered_200 = sum(delta.values())
    degraded = sum(v for k, v in delta.items() if k.startswith("fallback"))
    starts = [int(r[0]) for r in rows]
    span = (max(starts) - min(starts)) / 1e6 if len(starts) > 1 else seconds
    return OpenLoopResult(
        offered_rps=rate,
        achieved_rps=len(rows) / span if span > 0 else math.nan,
        requests=sent,
        in_budget_pct=100 * ok_in_budget / sent if sent else math.nan,
        shed_pct=100 * len(shed) / sent if sent else math.nan,
        other_pct=100 * (sent - ok_in_budget - len(shed)) / sent if sent else math.nan,
        late=sum(1 for t in times if t > budget_ms + 20),
        p99_ms=_percentile(times, 0.99),
        max_ms=max(times) if times else math.nan,
        shed_p99_ms=_percentile(shed, 0.99),
        degraded_pct=100 * degraded / answered_200 if answered_200 else math.nan,
    )


def _started(summary: str) -> int:
    """Requests h2load started, from its summary (``requests: N total, N started, ...``)."""
    m = re.search(r"requests: \d+ total, (\d+) started", summary)
    return int(m.group(1)) if m else 0
