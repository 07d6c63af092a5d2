"""``hybridserve serve``: the online server (uvicorn, uvloop, httptools)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hybridserve.cli.common import ProjectOpt, project


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
    project_path: ProjectOpt = None,
) -> None:
    """Serve the project's routes over HTTP (hybrid API and Open Inference Protocol)."""
    import math
    import os

    import uvicorn

    from hybridserve.observability.logging import configure

    proj = project(project_path)  # fail here, with a clear message, before any worker starts
    configure(log_level)
    source = proj.source_file or Path("hybridserve.yaml")
    os.environ["HYBRIDSERVE_PROJECT"] = str(source)
    os.environ["HYBRIDSERVE_ACCESS_LOG"] = "1" if access_log else "0"
    os.environ["HYBRIDSERVE_LOG_LEVEL"] = log_level
    if scheduler:
        from hybridserve.batch.schedule import Scheduler

        Scheduler(proj)  # a bad cron expression fails here, before any worker starts
        os.environ["HYBRIDSERVE_SCHEDULER_LOCK"] = str(proj.path(".hybridserve/scheduler.lock"))
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
        timeout_graceful_shutdown=math.ceil(proj.server.shutdown_timeout),
        lifespan="on",
    )
