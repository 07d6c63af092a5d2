"""The servers under test: how to start each one pinned to core 0, and how to stop it.

Each server is a :class:`ServerSpec`: a command line, an environment, the request path and body
file the load generator uses, and a readiness probe. :class:`RunningServer` starts it in its own
process group under ``taskset -c <core>`` (children such as mosec's workers inherit the pinning),
waits until it is ready, and stops exactly that process group.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _online.project import REQ_ROUTE, ROUTE, BenchProject

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
HYBRIDSERVE = REPO / ".venv" / "bin" / "hybridserve"
MOSEC_VENV = REPO / "bench" / ".venv-mosec"
MOSEC_PYTHON = MOSEC_VENV / "bin" / "python"


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One server under test."""

    key: str
    """Short name used in the report and on the command line (``--servers``)."""
    label: str
    argv: list[str]
    path: str
    """Request path the load generator POSTs to."""
    bodies: Path
    ready_path: str
    ready_body: bytes | None = None
    """POST this to ``ready_path`` to probe readiness (``None``: GET)."""
    env: dict[str, str] = field(default_factory=dict)
    unavailable: str | None = None
    """Why this server cannot run here (then it is reported as ``nan``)."""
    grpc_port: int | None = None
    """Measure gRPC ``ModelInfer`` on this port (``bodies`` is then the rows file)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _uvicorn(app: str, port: int) -> list[str]:
    return [
        str(VENV_PYTHON),
        "-m",
        "uvicorn",
        app,
        "--app-dir",
        str(HERE),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def hybridserve_serve_missing() -> str | None:
    """``None`` if ``hybridserve serve`` exists, else why not."""
    if not HYBRIDSERVE.exists():
        return f"{HYBRIDSERVE} not found"
    try:
        proc = subprocess.run(
            [str(HYBRIDSERVE), "serve", "--help"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"hybridserve serve --help failed: {exc}"
    if proc.returncode != 0:
        return "hybridserve serve not available (`hybridserve serve --help` failed)"
    return None


def first_line(path: Path) -> bytes:
    """The first request body of a JSONL file."""
    with path.open("rb") as fh:
        return fh.readline().strip()


class TraceSink(contextlib.AbstractContextManager["TraceSink"]):
    """An OTLP/HTTP endpoint that accepts span batches and drops them (for the traced point)."""

    def __init__(self) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


def specs(
    bench: BenchProject, mosec_missing: str | None, trace_sink: int | None = None
) -> list[ServerSpec]:
    """All seven servers, with fresh ports; the unavailable ones carry the reason."""
    model_env = {"BENCH_MODEL": str(bench.model_path), "BENCH_FEATURES": ",".join(bench.features)}
    features = bench.bodies["features"]
    hs_missing = hybridserve_serve_missing()
    if hs_missing is None and bench.stored == 0:
        stored_missing: str | None = "no precomputed predictions (see notes)"
    else:
        stored_missing = hs_missing
    granian_missing = None if importlib.util.find_spec("granian") else "granian not installed"
    out = []
    port = free_port()
    out.append(
        ServerSpec(
            "floor",
            "(a) bare ASGI, constant JSON (HTTP floor)",
            _uvicorn("floor_app:app", port),
            "/",
            features,
            "/",
            first_line(features),
        )
    )
    port = free_port()
    out.append(
        ServerSpec(
            "floor_granian",
            "(a') the same floor on granian (RSGI)",
            [
                str(VENV_PYTHON), "-m", "granian", "--interface", "rsgi", "--loop", "uvloop",
                "--runtime-mode", "st", "--workers", "1", "--host", "127.0.0.1",
                "--port", str(port), "--no-ws", "--log-level", "warning", "floor_app:rsgi_app",
            ],
            "/",
            features,
            "/",
            first_line(features),
            env={"PYTHONPATH": str(HERE)},
            unavailable=granian_missing,
        )
    )  # fmt: skip
    port = free_port()
    out.append(
        ServerSpec(
            "naive",
            "(b) naive: predict_proba inline per request",
            _uvicorn("naive_app:app", port),
            "/",
            features,
            "/",
            first_line(features),
            env=model_env,
        )
    )
    port = free_port()
    out.append(
        ServerSpec(
            "mosec",
            "(c) mosec, 1 worker, batch <= 64, 2 ms wait",
            [
                str(MOSEC_PYTHON),
                str(HERE / "mosec_app.py"),
                "--address",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            "/inference",
            features,
            "/inference",
            first_line(features),
            env=model_env,
            unavailable=mosec_missing,
        )
    )
    for key, label, path, kind, missing, front in (
        ("stored", "(d) hybridserve, stored predictions", f"/v1/predict/{ROUTE}", "stored",
         stored_missing, "uvicorn"),
        ("online", "(e) hybridserve, compute, features in request", f"/v1/predict/{REQ_ROUTE}",
         "features", hs_missing, "uvicorn"),
        ("entity", "(f) hybridserve, compute, features from online store", f"/v1/predict/{ROUTE}",
         "entity", hs_missing, "uvicorn"),
        ("stored_granian", "(d') (d) served by granian (RSGI)", f"/v1/predict/{ROUTE}", "stored",
         stored_missing or granian_missing, "granian"),
        ("online_granian", "(e') (e) served by granian (RSGI)", f"/v1/predict/{REQ_ROUTE}",
         "features", hs_missing or granian_missing, "granian"),
    ):  # fmt: skip
        port = free_port()
        argv = [str(HYBRIDSERVE), "serve", "-p", str(bench.project_dir), "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--workers", "1", "--http", front]
        out.append(
            ServerSpec(
                key, label, argv, path, bench.bodies[kind], "/v2/health/ready", unavailable=missing
            )
        )
    port = free_port()
    argv = [str(HYBRIDSERVE), "serve", "-p", str(bench.project_dir), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--workers", "1"]
    out.append(
        ServerSpec(
            "stored_traced",
            "(d'') (d) with tracing on, 1% of requests sampled",
            argv,
            f"/v1/predict/{ROUTE}",
            bench.bodies["stored"],
            "/v2/health/ready",
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{trace_sink}",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.01",
            },
            unavailable=stored_missing
            or (None if trace_sink is not None else "no trace sink")
            or (None if importlib.util.find_spec("opentelemetry") else "extra otel missing"),
        )
    )
    port, grpc_port = free_port(), free_port()
    argv = [str(HYBRIDSERVE), "serve", "-p", str(bench.project_dir), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--grpc-port", str(grpc_port), "--workers", "1"]
    out.append(
        ServerSpec(
            "grpc",
            "(g) hybridserve, gRPC ModelInfer, raw tensor",
            argv,
            "inference.GRPCInferenceService/ModelInfer",
            bench.rows_path,
            "/v2/health/ready",
            unavailable=hs_missing,
            grpc_port=grpc_port,
        )
    )
    return out


def port_of(spec: ServerSpec) -> int:
    """The port a spec's command line listens on."""
    return int(spec.argv[spec.argv.index("--port") + 1])


def http(
    port: int, path: str, body: bytes | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """One request to 127.0.0.1 (POST with a JSON body if given); ``(status, body)``."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


class RunningServer(contextlib.AbstractContextManager["RunningServer"]):
    """A started server process group, pinned to one core; stopped on exit."""

    def __init__(self, spec: ServerSpec, *, core: int, log: Path, ready_timeout: float = 90.0):
        self.spec = spec
        self.port = port_of(spec)
        self.log = log
        env = {**os.environ, **spec.env}
        env.pop("VIRTUAL_ENV", None)
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(core), *spec.argv],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.spec.key} exited with {self.proc.returncode} before it was ready "
                    f"(log: {self.log})\n{self.tail()}"
                )
            try:
                status, body = http(self.port, self.spec.ready_path, self.spec.ready_body, 2.0)
                if status == 200:
                    return
                last = f"HTTP {status}: {body[:200]!r}"
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise RuntimeError(f"{self.spec.key} not ready after {timeout:.0f} s ({last})")

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) used so far by every live process of the server's
        group (a server's workers, mosec's Rust front and Python workers), from ``/proc``."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid:  # field 5, the process group id
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / tick

    def tail(self, n: int = 20) -> str:
        """The last lines of the server's log."""
        self._log.flush()
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def probe(self) -> tuple[int, Any]:
        """Send the first benchmark body; ``(status, decoded JSON or raw text)``."""
        if self.spec.grpc_port is not None:
            import numpy as np

            from _online import grpc_load

            rows = np.load(self.spec.bodies)
            return grpc_load.probe(f"127.0.0.1:{self.spec.grpc_port}", rows, ROUTE)
        status, body = http(self.port, self.spec.path, first_line(self.spec.bodies), 10.0)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")[:300]

    def stop(self) -> None:
        """Stop this server's process group: SIGINT, then SIGTERM, then SIGKILL."""
        for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
        # Children (mosec's workers) may outlive the leader; clear what is left of the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def mosec_env_problem(sklearn_version: str, joblib_version: str, *, create: bool) -> str | None:
    """Make sure ``bench/.venv-mosec`` has mosec and the same scikit-learn; ``None`` if ready."""
    check = (
        "import importlib.metadata as m, mosec, sklearn, joblib, numpy; "
        "print(sklearn.__version__, joblib.__version__, m.version('mosec'))"
    )

    def versions() -> list[str] | None:
        if not MOSEC_PYTHON.exists():
            return None
        proc = subprocess.run([str(MOSEC_PYTHON), "-c", check], capture_output=True, text=True)
        return proc.stdout.split() if proc.returncode == 0 else None

    found = versions()
    if found and found[:2] == [sklearn_version, joblib_version]:
        return None
    if not create:
        return f"{MOSEC_VENV} missing or mismatched (run without --no-install to create it)"
    print(f"[online] preparing {MOSEC_VENV} (mosec, scikit-learn=={sklearn_version})", flush=True)
    if not MOSEC_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(MOSEC_VENV)], check=True)
    pip = [str(MOSEC_PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    proc = subprocess.run(
        [*pip, "mosec", "numpy", f"scikit-learn=={sklearn_version}", f"joblib=={joblib_version}"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return f"could not install mosec: {proc.stderr.strip().splitlines()[-1:]}"
    found = versions()
    if not found or found[:2] != [sklearn_version, joblib_version]:
        return f"{MOSEC_VENV}: scikit-learn/joblib mismatch after install ({found})"
    return None
