"""Batch scoring: score every entity of a job's input in chunks, publish the run atomically.

:func:`run_job` is the entry point (the CLI's ``batch run`` and the demo call it). A run reads
its input in deterministic chunks (:mod:`.inputs`), scores and writes each chunk to the
prediction store and a Parquet snapshot (:mod:`.chunk`) on a process pool or Ray
(:mod:`.executors`), records its progress in a manifest (:mod:`.manifest`) so a killed run
resumes where it stopped, and publishes only when every chunk is done (:mod:`.runner`).
:mod:`.schedule` starts jobs on their cron schedule.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hybridserve.batch.manifest import ChunkStats, RunFailed, RunManifest, runs, show
    from hybridserve.batch.runner import run_job

__all__ = ["ChunkStats", "RunFailed", "RunManifest", "run_job", "runs", "show"]
_HOME = {"run_job": "runner", **{name: "manifest" for name in __all__ if name != "run_job"}}


def __getattr__(name: str) -> Any:
    """The names above, imported when first asked for: a pool worker imports
    ``hybridserve.batch.executors`` alone, not the planner and every executor (half a second
    of each worker's start)."""
    if name in _HOME:
        return getattr(importlib.import_module(f"hybridserve.batch.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
