"""A batch run's manifest: what the run is, what it has done, and where its files live.

One JSON file per run, ``<runs_dir>/<job>/<run_id>/manifest.json``, rewritten atomically
(temp file, fsync, ``os.replace``) after every finished chunk, so a killed run leaves either
the previous manifest or the new one, never half of one. A chunk is listed in ``chunks`` only
after both of its sinks (the prediction store and its snapshot file) are written: resuming
skips exactly those chunks.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from hybridserve.config import BatchJobConfig, Project
from hybridserve.errors import ConfigError, HybridServeError, RunNotFound

Status = Literal["planned", "running", "completed", "failed"]
MANIFEST = "manifest.json"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class RunFailed(HybridServeError):
    """A batch run did not complete (CLI exit code 1); its manifest says why."""


@dataclass(slots=True)
class ChunkStats:
    """What one chunk did: rows read, scored, rejected, carried over, filtered out."""

    index: int
    rows: int
    scored: int = 0
    rejected: int = 0
    carried: int = 0
    skipped: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class RunManifest:
    """Everything needed to audit a run and to resume it exactly as it started."""

    run_id: str
    job: str
    route: str
    model: str
    model_version: int
    feature_fingerprint: str
    input: dict[str, Any]
    """Input fingerprint: kind, path or view, and (path, size, mtime) per file."""
    snapshot_at: float
    """``as_of`` of rows without their own time and ``computed_at`` of every record."""
    chunk_rows: int
    total_rows: int
    total_chunks: int
    executor: str
    only_changed: bool = False
    top_k_active: int | None = None
    previous_run: str | None = None
    """The completed run that ``--only-changed`` compared against and carried records from."""
    status: Status = "running"
    chunks: dict[int, ChunkStats] = field(default_factory=dict)
    started_at: float = 0.0
    finished_at: float | None = None
    published_at: float | None = None
    error: str | None = None
    dir: str = ""
    drift: dict[str, Any] | None = None
    """The input's (and scores') drift against the model version's reference profile
    (``batch/quality.py``); ``None`` when the version has none."""

    @property
    def model_ref(self) -> str:
        return f"{self.model}/{self.model_version}"

    @property
    def chunks_done(self) -> list[int]:
        return sorted(self.chunks)

    def total(self, what: str) -> int:
        return sum(int(getattr(c, what)) for c in self.chunks.values())

    @property
    def reject_share(self) -> float:
        considered = self.total("scored") + self.total("rejected")
        return self.total("rejected") / considered if considered else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["chunks"] = [asdict(self.chunks[i]) for i in self.chunks_done]
        data["chunks_done"] = self.chunks_done
        data["model_ref"] = self.model_ref
        data["rows_read"] = self.total("rows")
        data["rows_scored"] = self.total("scored")
        data["rows_rejected"] = self.total("rejected")
        data["rows_carried"] = self.total("carried")
        data["rows_skipped"] = self.total("skipped")
        data["seconds"] = (
            None if self.finished_at is None else round(self.finished_at - self.started_at, 3)
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunManifest:
        known = {f for f in cls.__dataclass_fields__}
        fields = {k: v for k, v in data.items() if k in known}
        fields["chunks"] = {c["index"]: ChunkStats(**c) for c in data.get("chunks", [])}
        return cls(**fields)

    def save(self) -> None:
        """Write the manifest atomically (temp file, fsync, replace)."""
        write_atomic(Path(self.dir) / MANIFEST, orjson.dumps(self.to_dict(), option=_JSON))


_JSON = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise ConfigError(
            f"--run-id: expected letters, digits, '.', '_' or '-' (at most 128), got {run_id!r}"
        )
    return run_id


def job_config(project: Project, name: str) -> BatchJobConfig:
    try:
        return project.batch_jobs[name]
    except KeyError:
        raise ConfigError(
            f"unknown batch job {name!r}; known jobs: {sorted(project.batch_jobs) or 'none'}"
        ) from None


def job_dir(project: Project, job: str) -> Path:
    return project.path(job_config(project, job).runs_dir) / job


def load(path: Path) -> RunManifest:
    manifest = RunManifest.from_dict(orjson.loads((path / MANIFEST).read_bytes()))
    manifest.dir = str(path)
    return manifest


def find(project: Project, job: str, run_id: str) -> RunManifest | None:
    path = job_dir(project, job) / check_run_id(run_id)
    return load(path) if (path / MANIFEST).exists() else None


def runs(project: Project, job: str | None = None) -> list[RunManifest]:
    """Manifests of every run (of ``job``), newest first."""
    found: list[RunManifest] = []
    for name in [job] if job is not None else sorted(project.batch_jobs):
        root = job_dir(project, name)
        if root.is_dir():
            found += [load(p.parent) for p in root.glob(f"*/{MANIFEST}")]
    return sorted(found, key=lambda m: (m.started_at, m.run_id), reverse=True)


def show(project: Project, run_id: str) -> RunManifest:
    for job in sorted(project.batch_jobs):
        found = find(project, job, run_id)
        if found is not None:
            return found
    raise RunNotFound(f"no batch run {run_id!r} in any job of this project", run_id=run_id)


def last_completed(project: Project, job: str, *, before: str | None = None) -> RunManifest | None:
    for m in runs(project, job):
        if m.status == "completed" and m.run_id != before:
            return m
    return None


@contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on a run directory; a second process running it fails fast.

    The kernel drops the lock when the holder dies (even by SIGKILL), so a killed run can be
    resumed at once.
    """
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFailed(f"run {path.name} is already running in another process") from None
        yield
    finally:
        os.close(fd)
