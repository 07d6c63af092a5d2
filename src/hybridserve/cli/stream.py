"""``hybridserve stream ...``: run a stream consumer, show a stream's status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer

from hybridserve.cli.common import JsonOpt, ProjectOpt, console, print_json, project, run, table

T = TypeVar("T")

stream_app = typer.Typer(
    help="Streams: consume events, show lag and dead letters.", no_args_is_help=True
)


@stream_app.command("run")
def run_consumer(
    stream: Annotated[str, typer.Argument(help="Stream to consume (from the project's streams).")],
    consumer: Annotated[
        str | None,
        typer.Option(
            "--consumer",
            help="Consumer name in the group, kept across restarts (default: the host name). "
            "Give each consumer on one host its own.",
        ),
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
    from hybridserve.services import Services, batch_gc, freeze_loaded
    from hybridserve.streaming import StreamConsumer
    from hybridserve.streaming.metrics import serve_metrics

    proj = project(project_path)
    if model_threads:
        from hybridserve.runtimes.threads import limit_threads

        limit_threads(model_threads)
    name = consumer or default_consumer_name()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    log = logging.getLogger("hybridserve.stream")

    async def go() -> Any:
        services = Services.open(proj)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, _stop_soon, stop, sig)
        worker = StreamConsumer(
            services, stream, consumer=name, poll_interval=proj.server.reload_interval
        )
        server = await serve_metrics(worker.metrics, metrics_port) if metrics_port else None
        console.print(f"stream {stream}: consuming as {name!r} ({worker.source.kind} source)")
        freeze_loaded()
        batch_gc()
        try:
            return await worker.run(stop, until_idle=until_idle)
        finally:
            if server is not None:
                server.close()
            await worker.close()
            await services.close()

    totals = _run_until_stopped(go())
    console.print(
        f"stream {stream}: {totals.read} read, {totals.scored} scored, "
        f"{totals.duplicates} duplicates, {totals.late} late, {totals.dead} dead-lettered"
    )
    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        # A model call abandoned at the stop is still running in its thread: the interpreter
        # would wait for it at exit. Its batch was not acknowledged, so nothing is lost.
        log.warning("stream %s: exiting with a model call still running", stream)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _run_until_stopped(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, except that it does not wait for the default executor's threads
    at the end: a model call abandoned at a stop would hold the exit until it returned."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        tasks = asyncio.all_tasks(loop)  # calls abandoned past their deadline
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()  # shuts the executor down without waiting


def default_consumer_name() -> str:
    """The host name: the same across restarts on one host (or one pod of a StatefulSet),
    so a restarted consumer re-reads its own pending entries first, in stream order."""
    return socket.gethostname()


def _stop_soon(stop: asyncio.Event, sig: int) -> None:
    """Ask the consumer to stop, and make sure the process ends even if it cannot.

    The consumer stops within its ``stop_timeout``; the timer is for what no deadline in the
    loop can reach (a blocked event loop, a hung close). A second signal exits at once.
    """
    if stop.is_set():
        os._exit(128 + sig)
    stop.set()
    timer = threading.Timer(_HARD_STOP, _hard_stop, (sig,))
    timer.daemon = True
    timer.start()


_HARD_STOP = 4.0
"""Seconds after a stop signal after which the process exits whatever it is doing."""


def _hard_stop(sig: int) -> None:
    logging.getLogger("hybridserve.stream").error(
        "not stopped %gs after signal %d; exiting", _HARD_STOP, sig
    )
    sys.stderr.flush()
    os._exit(128 + sig)


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
    if info.get("partitions"):
        rows = [
            (holder or "(nobody)", ", ".join(map(str, parts)))
            for holder, parts in sorted(info["partitions"].items())
        ]
        table("partitions", ["held by", "partitions"], rows)
    if info["consumers"]:
        cols = ["consumer", "read", "scored", "duplicates", "late", "dead", "events_per_s"]
        table("consumers", cols, [[c.get(k) for k in cols] for c in info["consumers"]])
