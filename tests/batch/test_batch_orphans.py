"""A killed ``batch run`` takes its workers with it; a killed worker fails the run, named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from batch_helpers import cards, job, write_input

from hybridserve.batch.chunk import DELAY_ENV
from hybridserve.config import Project

Factory = Callable[..., Project]


def chunks_done(manifest: Path) -> int:
    try:
        return len(json.loads(manifest.read_text())["chunks_done"])
    except (OSError, ValueError):
        return 0


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process, ``None`` when it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = text.rsplit(")", 1)[1].split()[:2]
    return None if state in ("Z", "X") else (state, int(ppid))


def descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := _stat(int(entry))) is not None:
            parents[int(entry)] = found[1]
    out: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - out
        out |= frontier
    return out


def test_sigkill_of_the_run_leaves_no_worker_behind(batch_project: Factory) -> None:
    project = batch_project({"daily": job({"path": "data/cards.parquet"}, workers=2)})
    write_input(project, cards(project))
    manifest = project.path(".hybridserve/runs/daily/orphans/manifest.json")
    args = ["batch", "run", "daily", "--run-id", "orphans", "-p", str(project.source_file)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybridserve", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, DELAY_ENV: "0.3"},
    )
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while chunks_done(manifest) < 2:
            assert proc.poll() is None, "the run ended early"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.05)
        children = descendants(proc.pid)
        # The forkserver, its two workers and the resource tracker.
        assert len(children) >= 3, children
        proc.kill()  # SIGKILL the run itself, not its process group
        proc.wait(timeout=10)
        deadline = time.monotonic() + 30
        while (alive := {pid for pid in children if _stat(pid) is not None}) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert not alive, f"still running after the run was killed: {sorted(alive)}"
    finally:
        for pid in children:
            if _stat(pid) is not None:
                os.kill(pid, signal.SIGKILL)


def test_a_killed_worker_fails_the_run_with_a_clear_error(batch_project: Factory) -> None:
    project = batch_project({"daily": job({"path": "data/cards.parquet"}, workers=2)})
    write_input(project, cards(project))
    manifest = project.path(".hybridserve/runs/daily/victim/manifest.json")
    args = ["batch", "run", "daily", "--run-id", "victim", "-p", str(project.source_file)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybridserve", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, DELAY_ENV: "0.3", "COLUMNS": "80"},
    )
    try:
        deadline = time.monotonic() + 60
        while chunks_done(manifest) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.05)
        # Pool workers are the forkserver's children (grandchildren of the run).
        workers = [p for p in descendants(proc.pid) if (_stat(p) or ("", proc.pid))[1] != proc.pid]
        assert workers, "no pool worker found"
        os.kill(workers[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "a worker process died abruptly" in err and "BrokenProcessPool" not in err, err
