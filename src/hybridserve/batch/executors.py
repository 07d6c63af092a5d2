"""The ``local`` executor: a process pool running :class:`~hybridserve.batch.chunk.ChunkWorker`.

A process pool over chunks, at most two per worker in flight (bounded memory). Each worker
loads the model once (pool initializer), reads its chunk itself when that is cheap (Parquet row
groups, a view) or gets it from the parent's stream (CSV, huge row groups), writes its chunk's
sinks and returns counts. With one worker the chunks run in this process, with no pool to
start. Scripts that call ``run_job`` need the usual ``if __name__ == "__main__":`` guard:
workers start from a forkserver. ``on_done`` is called in the parent, in completion order,
once per finished chunk. The ``ray`` and ``spark`` executors (:mod:`.ray_pool`,
:mod:`.spark`) run the same ChunkWorker on their own workers.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import pyarrow as pa

from hybridserve.batch.chunk import ChunkWorker, RunContext
from hybridserve.batch.inputs import InputPlan
from hybridserve.batch.manifest import ChunkStats
from hybridserve.config import Project
from hybridserve.errors import HybridServeError
from hybridserve.registry.refs import ModelRef
from hybridserve.runtimes.threads import limit_threads

OnDone = Callable[[ChunkStats], None]
_worker: ChunkWorker | None = None


_plan: InputPlan | None = None
_init_error: BaseException | None = None


def _die_with(parent: int) -> None:
    """End this worker when the run's process ``parent`` ends, however it ends.

    A pool worker is a child of the forkserver, not of the run, and blocks on a queue whose
    other ends it holds itself: after a SIGKILL of the run, workers, forkserver and resource
    tracker would live on (each holds the others' pipes open), keeping the model in memory
    and the store's files open. So each worker watches the run's pid (a pidfd turns readable
    when the process exits) and ends itself; the forkserver and the resource tracker then
    see their last pipe close and exit. ``PR_SET_PDEATHSIG`` covers the forkserver dying.
    """
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    def watch() -> None:
        try:
            fd = os.pidfd_open(parent)
        except ProcessLookupError:
            os.kill(os.getpid(), signal.SIGKILL)
        except (OSError, AttributeError):  # no pidfd (not Linux 5.3+): poll instead
            while _alive(parent):
                time.sleep(1.0)
        else:
            select.select([fd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    if not _alive(parent):
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, name="hybridserve-parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_PR_SET_PDEATHSIG = 1


def _init(ctx: RunContext, plan: InputPlan | None, parent: int) -> None:
    global _worker, _plan, _init_error
    _die_with(parent)
    limit_threads(1)  # one BLAS/OpenMP thread per worker: the pool is the parallelism
    try:
        _worker, _plan = ChunkWorker(ctx), plan
    except Exception as exc:
        # An initializer that raises breaks the whole pool, and the parent sees only
        # BrokenProcessPool. Keep the error; the worker's first chunk raises it instead,
        # and the parent gets the real cause (a store that cannot open, say).
        _init_error = exc


def _process(index: int, table: pa.Table | None) -> ChunkStats:
    if _init_error is not None:
        raise _init_error
    assert _worker is not None, "worker not initialised"
    if table is None:  # the worker reads its own chunk
        assert _plan is not None
        table = _plan.read_chunk(index)
    return _worker.process(index, table)


def start_forkserver(project: Project, model: str) -> multiprocessing.context.ForkServerContext:
    """Start the server the pool's workers fork from, if it is not running yet, and return
    its context. The server imports the scoring stack once: scikit-learn's ensembles (about a
    second and a half), or for a model compiled by tl2cgen (``compile: tl2cgen``) treelite and
    tl2cgen only (a fraction of that): its workers score with the trees an earlier load
    checked, without unpickling the estimator (``runtimes/compiled.py``). A run calls this
    before it plans its input, so the import overlaps the planning, and later runs in the same
    process fork from the server already warm (whatever it preloaded)."""
    cfg = project.models.get(ModelRef.parse(model).name)
    scoring = ["treelite", "tl2cgen"] if cfg and cfg.compile == "tl2cgen" else ["sklearn.ensemble"]
    mp = multiprocessing.get_context("forkserver")
    mp.set_forkserver_preload(["hybridserve.batch.executors", *scoring])
    from multiprocessing import forkserver

    forkserver.ensure_running()
    return mp


def run_local(
    ctx: RunContext, plan: InputPlan, todo: Iterable[int], workers: int, on_done: OnDone
) -> None:
    wanted = set(todo)
    chunks = plan.chunks(skip=set(range(plan.total_chunks)) - wanted)
    if workers <= 1 or len(wanted) <= 1:
        worker = ChunkWorker(ctx)
        try:
            for stats in worker.process_many(chunks):
                on_done(stats)
        finally:
            worker.close()
        return
    # Workers read their own chunks when that is cheap (Parquet with small row groups, a
    # view): the parent then only hands out indices. Otherwise the parent streams the input.
    own = plan.random_access
    work: Iterable[tuple[int, pa.Table | None]] = (
        ((i, None) for i in sorted(wanted)) if own else chunks
    )
    mp = start_forkserver(ctx.project, ctx.model.ref)
    pool = ProcessPoolExecutor(
        workers,
        mp_context=mp,
        initializer=_init,
        initargs=(ctx, plan if own else None, os.getpid()),
    )
    pending: set[Future[ChunkStats]] = set()
    try:
        for index, table in work:
            pending.add(pool.submit(_process, index, table))
            while len(pending) >= 2 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    on_done(f.result())
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                on_done(f.result())
    except BrokenProcessPool:
        # Only a worker that died (a signal, the OOM killer) gets here: errors are raised
        # through the chunk's future.
        raise HybridServeError(
            "a worker process died abruptly (killed by a signal, e.g. out of memory)"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
