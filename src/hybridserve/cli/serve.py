"""``hybridserve serve``: the online server (uvicorn, uvloop, httptools)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from hybridserve.cli.common import ProjectOpt, project
from hybridserve.errors import ConfigError


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.", min=0, max=65535)] = 8000,
    workers: Annotated[
        int, typer.Option(help="Server processes (share stores and registry).", min=1)
    ] = 1,
    access_log: Annotated[bool, typer.Option(help="JSON access log line per request.")] = True,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    scheduler: Annotated[
        bool, typer.Option(help="Also run scheduled batch jobs (in the first worker only).")
    ] = False,
    grpc_port: Annotated[
        int | None,
        typer.Option(
            help="Also serve the Open Inference Protocol over gRPC on this port (extra 'grpc').",
            min=0,
            max=65535,
        ),
    ] = None,
    http: Annotated[
        Literal["uvicorn", "granian"],
        typer.Option(
            help="HTTP front: uvicorn (uvloop, httptools) or granian (Rust HTTP; predict "
            "answers over its RSGI interface; extra 'granian')."
        ),
    ] = "uvicorn",
    project_path: ProjectOpt = None,
) -> None:
    """Serve the project's routes over HTTP (hybrid API and Open Inference Protocol), and the
    Open Inference Protocol over gRPC with ``--grpc-port``."""
    import os

    import uvicorn

    from hybridserve.observability.logging import configure

    proj = project(project_path)  # fail here, with a clear message, before any worker starts
    configure(log_level)
    source = proj.source_file or Path("hybridserve.yaml")
    os.environ["HYBRIDSERVE_PROJECT"] = str(source)
    os.environ["HYBRIDSERVE_ACCESS_LOG"] = "1" if access_log else "0"
    os.environ["HYBRIDSERVE_LOG_LEVEL"] = log_level
    os.environ.pop("HYBRIDSERVE_GRPC_ADDRESS", None)
    if grpc_port is not None:
        from hybridserve._optional import require

        require("grpc", "grpc")  # a missing extra fails here, naming it, before any worker
        require("google.protobuf", "grpc")
        if grpc_port == port:
            raise ConfigError(f"--grpc-port {grpc_port}: the HTTP server already uses it")
        # Each worker binds it (SO_REUSEPORT): the kernel spreads calls over the workers.
        os.environ["HYBRIDSERVE_GRPC_ADDRESS"] = _address(host, grpc_port)
    if scheduler:
        from hybridserve.batch.schedule import Scheduler

        Scheduler(proj)  # a bad cron expression fails here, before any worker starts
        os.environ["HYBRIDSERVE_SCHEDULER_LOCK"] = str(proj.path(".hybridserve/scheduler.lock"))
    metrics_dir = None
    if workers > 1:
        import tempfile

        from hybridserve.observability.shared import ENV

        # Each worker writes its counters here; a scrape of any worker sums them all.
        metrics_dir = tempfile.mkdtemp(prefix="hybridserve-metrics-")
        os.environ[ENV] = metrics_dir
    else:
        os.environ.pop("HYBRIDSERVE_METRICS_DIR", None)
    try:
        if http == "granian":
            _run_granian(host, port, workers, log_level, proj.server.shutdown_timeout)
        else:
            _run(uvicorn, host, port, workers, log_level, proj.server.shutdown_timeout)
    finally:
        if metrics_dir is not None:
            import shutil

            shutil.rmtree(metrics_dir, ignore_errors=True)


def _run(uvicorn: Any, host: str, port: int, workers: int, log_level: str, shutdown: float) -> None:
    import math

    uvicorn.run(
        "hybridserve.server.factory:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        access_log=False,  # hybridserve writes its own (batched) access log
        proxy_headers=False,  # nothing reads the client address; parsing it costs per request
        log_config=None,
        log_level=log_level,
        timeout_graceful_shutdown=math.ceil(shutdown),
        lifespan="on",
    )


def _run_granian(host: str, port: int, workers: int, log_level: str, shutdown: float) -> None:
    """The same app behind granian's Rust HTTP server (RSGI, one runtime thread per worker:
    the Rust side and Python then share a core without contending)."""
    import math

    from hybridserve._optional import require

    granian = require("granian", "granian")
    constants = require("granian.constants", "granian")
    levels = require("granian.log", "granian").LogLevels
    granian.Granian(
        "hybridserve.server.factory:rsgi_app_from_env",
        address=host,
        port=port,
        interface=constants.Interfaces.RSGI,
        workers=workers,
        factory=True,
        loop=constants.Loops.uvloop,
        runtime_mode=constants.RuntimeModes.st,
        log_enabled=True,
        log_level=levels(log_level),
        workers_kill_timeout=math.ceil(shutdown),
    ).serve()


def _address(host: str, port: int) -> str:
    """``host:port`` as gRPC spells it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
