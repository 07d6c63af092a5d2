"""``hybridserve stream ...``: run a stream consumer, show a stream's status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from typing import Annotated, Any

import typer

from hybridserve.cli.common import JsonOpt, ProjectOpt, console, print_json, project, run, table

stream_app = typer.Typer(
    help="Streams: consume events, show lag and dead letters.", no_args_is_help=True
)


@stream_app.command("run")
def run_consumer(
    stream: Annotated[str, typer.Argument(help="Stream to consume (from the project's streams).")],
    consumer: Annotated[
        str | None,
        typer.Option("--consumer", help="Consumer name in the group (default: host-pid)."),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Serve /metrics on this port.")
    ] = None,
    model_threads: Annotated[
        int,
        typer.Option(
            "--model-threads",
            min=0,
            help="OpenMP/BLAS threads per model call (0: the library's default). One keeps "
            "idle OpenMP workers from spinning on the cores Redis and the loop need.",
        ),
    ] = 1,
    until_idle: Annotated[
        float | None, typer.Option("--until-idle", help="Exit after this many idle seconds.")
    ] = None,
    project_path: ProjectOpt = None,
) -> None:
    """Consume STREAM until interrupted: windows, scores, predictions, outputs, then ack."""
    import os

    from hybridserve.services import Services, freeze_loaded
    from hybridserve.streaming import StreamConsumer
    from hybridserve.streaming.metrics import serve_metrics

    proj = project(project_path)
    if model_threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=model_threads)
    name = consumer or f"{socket.gethostname()}-{os.getpid()}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    async def go() -> Any:
        services = Services.open(proj)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        worker = StreamConsumer(
            services, stream, consumer=name, poll_interval=proj.server.reload_interval
        )
        server = await serve_metrics(worker.metrics, metrics_port) if metrics_port else None
        console.print(f"stream {stream}: consuming as {name!r} ({worker.source.kind} source)")
        freeze_loaded()
        try:
            return await worker.run(stop, until_idle=until_idle)
        finally:
            if server is not None:
                server.close()
            await worker.close()
            await services.close()

    totals = run(go())
    console.print(
        f"stream {stream}: {totals.read} read, {totals.scored} scored, "
        f"{totals.duplicates} duplicates, {totals.late} late, {totals.dead} dead-lettered"
    )


@stream_app.command()
def status(
    stream: Annotated[str, typer.Argument(help="Stream to describe.")],
    project_path: ProjectOpt = None,
    json: JsonOpt = False,
) -> None:
    """Lag, pending entries, dead letters and throughput of STREAM."""
    from hybridserve.services import Services
    from hybridserve.streaming.status import stream_status

    proj = project(project_path)

    async def go() -> dict[str, Any]:
        services = Services.open(proj)
        try:
            return await stream_status(services, stream)
        finally:
            await services.close()

    info = run(go())
    if json:
        print_json(info)
        return
    fields = ("source", "route", "length", "lag", "pending", "dead_letters", "outputs")
    table(
        f"stream {stream}",
        ["", "value"],
        [(k, info[k]) for k in fields] + [("events/s", info["events_per_s"])],
    )
    if info["consumers"]:
        cols = ["consumer", "read", "scored", "duplicates", "late", "dead", "events_per_s"]
        table("consumers", cols, [[c.get(k) for k in cols] for c in info["consumers"]])
