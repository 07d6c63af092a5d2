"""A worker's real error reaches the run and the CLI: a full disk, a store that cannot open."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from batch_helpers import cards, job, store_records, write_input

from hybridserve.config import Project
from hybridserve.storage import open_store

Factory = Callable[..., Project]


def hs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hybridserve", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": "80"},
    )


def _mount(target: Path, *options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small filesystem")
    done = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a filesystem here: {done.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    _mount(mnt, "-t", "tmpfs", "-o", "size=1m", "tmpfs")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the filesystem holding ``directory`` but ``leave`` bytes; return the filler."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(
    ("leave", "failing"),
    [(0, "cannot open"), (96 * 1024, "cannot write to")],
    ids=["full-at-start", "full-mid-run"],
)
def test_full_disk_names_the_store_and_the_run_resumes(
    batch_project: Factory, small_fs: Path, leave: int, failing: str
) -> None:
    db = small_fs / "predictions.db"
    project = batch_project(
        {"daily": job({"path": "data/cards.parquet"}, workers=2)},
        stores={"predictions": f"sqlite:///{db}", "prefix": f"t{uuid.uuid4().hex[:6]}:"},
    )
    source = cards(project)
    write_input(project, source)
    # The database exists; then the disk fills up.
    asyncio.run(open_store(project.url(f"sqlite:///{db}")).close())
    filler = fill(small_fs, leave)
    file = str(project.source_file)

    failed = hs("batch", "run", "daily", "--run-id", "full", "-p", file)
    assert failed.returncode == 1, failed.stderr
    line = one_error_line(failed.stderr)
    assert "prediction store" in line and str(db) in line and failing in line, line
    assert "no space left on device" in line.lower(), line
    assert "BrokenProcessPool" not in line
    manifest = json.loads((project.path(".hybridserve/runs/daily/full/manifest.json")).read_text())
    assert manifest["status"] == "failed" and "no space left" in manifest["error"].lower()

    filler.unlink()
    resumed = hs("batch", "run", "daily", "--run-id", "full", "-p", file, "--json")
    assert resumed.returncode == 0, resumed.stderr
    done = json.loads(resumed.stdout)
    assert done["status"] == "completed" and done["rows_scored"] == 400
    ids = source["card_id"].to_pylist()
    assert all(r is not None for r in store_records(project, "full", ids))


def test_store_that_cannot_open_is_reported_with_its_cause(
    batch_project: Factory, tmp_path: Path
) -> None:
    ro = tmp_path / "readonly"
    ro.mkdir()
    db = ro / "predictions.db"
    project = batch_project(
        {"daily": job({"path": "data/cards.parquet"}, workers=2)},
        stores={"predictions": f"sqlite:///{db}"},
    )
    write_input(project, cards(project))
    if os.geteuid() == 0:  # root ignores file modes: make it a read-only mount instead
        _mount(ro, "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs")
    else:
        ro.chmod(0o555)
    try:
        failed = hs("batch", "run", "daily", "--run-id", "ro", "-p", str(project.source_file))
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(ro)], check=False)
        else:
            ro.chmod(0o755)
    assert failed.returncode == 1, failed.stderr
    line = one_error_line(failed.stderr)
    assert "prediction store" in line and str(db) in line, line
    assert "read-only file system" in line.lower() or "permission denied" in line.lower(), line
    assert "BrokenProcessPool" not in line
