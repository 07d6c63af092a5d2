"""What a run aimed at a cluster needs from every worker node, checked before any chunk runs.

On one machine every worker shares the driver's disk. On a cluster each node opens the
prediction store and the registry itself, loads the model's artifact, reads its own chunks from
the input paths and writes its snapshot files to the run directory. So:

- an embedded store (``sqlite:///``, ``memory://``) would be a private copy on each node:
  a cluster run needs the prediction store and the registry on a server (Redis, PostgreSQL);
- input files, the artifacts directory and the runs directory must be on storage every node
  mounts at the same path (NFS, a shared volume).

:func:`check_stores` refuses the first from the settings alone; :func:`node_problems` is run on
each node (the Ray executor schedules it on every alive node) and :func:`refuse` turns what
the nodes report into one error naming the settings to change.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path

from hybridserve.batch.chunk import RunContext
from hybridserve.batch.inputs import InputPlan
from hybridserve.config import Project
from hybridserve.errors import ConfigError

EMBEDDED = ("sqlite", "memory")


def _embedded(url: str) -> bool:
    return url.partition("://")[0].lower() in EMBEDDED


def check_stores(project: Project, where: str) -> None:
    """Refuse a cluster run (``where`` names the setting aiming it there) on embedded stores."""
    problems = []
    predictions = project.url(project.stores.predictions_url)
    if _embedded(predictions):
        problems.append(
            f"the prediction store is embedded ({predictions.partition('://')[0]}://): "
            "set stores.predictions to a Redis URL"
        )
    registry = project.url(project.registry.url)
    if _embedded(registry):
        problems.append(
            "the registry is an embedded SQLite file: set registry.url to a PostgreSQL URL"
        )
    if problems:
        raise ConfigError(
            f"{where}: a run on a cluster needs stores every worker node can reach, but "
            + "; ".join(problems)
            + f" (or run it with the local executor: unset {where})"
        )


def needs(ctx: RunContext, plan: InputPlan, job: str) -> dict[str, tuple[str, str]]:
    """Each path a worker node uses: path -> (what it is, the setting that places it)."""
    project = ctx.project
    # A view's rows travel with the plan: it has no input path to reach.
    files = [] if plan.table is not None else plan.files
    out = {path: ("input", f"batch_jobs.{job}.input.path") for path in files}
    out[str(project.path(project.registry.artifacts))] = ("artifacts", "registry.artifacts")
    out[ctx.run_dir] = ("run directory", f"batch_jobs.{job}.runs_dir")
    if ctx.previous_dir is not None:
        out[ctx.previous_dir] = ("previous run", f"batch_jobs.{job}.runs_dir")
    return out


def node_problems(paths: Mapping[str, tuple[str, str]], sizes: Mapping[str, int]) -> list[str]:
    """Run on a worker node: which of ``paths`` it cannot use (``sizes``: input files' sizes
    as the driver sees them, so a different file at the same path is caught too)."""
    problems = []
    for path, (what, _) in paths.items():
        p = Path(path)
        if what == "input":
            if not p.is_file() or p.stat().st_size != sizes.get(path):
                problems.append(path)
        elif what == "run directory":
            probe = p / f".probe-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
            try:
                probe.write_bytes(b"")
                probe.unlink()
            except OSError:
                problems.append(path)
        elif not p.is_dir() or not os.access(p, os.R_OK):
            problems.append(path)
    return problems


def refuse(
    report: Mapping[str, list[str]], paths: Mapping[str, tuple[str, str]], where: str
) -> None:
    """Raise one error for every node (``report``: node -> its problem paths) that has any."""
    lines = []
    for node, missing in sorted(report.items()):
        if missing:
            named = ", ".join(f"{paths[m][0]} {m} ({paths[m][1]})" for m in missing)
            lines.append(f"worker node {node} cannot reach {named}")
    if lines:
        raise ConfigError(
            f"{where}: " + "; ".join(lines) + ": put them on storage every node mounts "
            "at the same path and point the settings named there at it"
        )
