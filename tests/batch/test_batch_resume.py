"""A run killed with SIGKILL resumes to exactly what a clean run writes; CLI exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from batch_helpers import cards, job, snapshot, store_records, write_input

from hybridserve.batch import run_job
from hybridserve.batch.chunk import DELAY_ENV
from hybridserve.cli import main
from hybridserve.config import Project

Factory = Callable[..., Project]


def hs(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hybridserve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the kill takes the workers too
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def chunks_done(manifest: Path) -> int:
    try:
        return len(json.loads(manifest.read_text())["chunks_done"])
    except (OSError, ValueError):
        return 0


def test_sigkill_then_resume_equals_clean_run(batch_project: Factory) -> None:
    project = batch_project({"daily": job({"path": "data/cards.parquet"}, workers=2)})
    source = cards(project)
    write_input(project, source)
    file = str(project.source_file)
    run_dir = project.path(".hybridserve/runs/daily/killed")

    proc = hs(
        "batch", "run", "daily", "--run-id", "killed", "-p", file, "--json", env={DELAY_ENV: "0.15"}
    )
    deadline = time.monotonic() + 60
    while chunks_done(run_dir / "manifest.json") < 3:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    killed = json.loads((run_dir / "manifest.json").read_text())
    assert killed["status"] == "running" and 3 <= len(killed["chunks_done"]) < 20

    resumed = hs("batch", "run", "daily", "--run-id", "killed", "-p", file, "--json")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    done = json.loads(out)
    assert done["status"] == "completed" and done["chunks_done"] == list(range(20))
    assert done["rows_scored"] == 400 and done["snapshot_at"] == killed["snapshot_at"]

    clean = run_job(project, "daily", run_id="clean", workers=1, snapshot_at=killed["snapshot_at"])
    ids = source["card_id"].to_pylist()
    resumed_records = store_records(project, "killed", ids)
    assert all(r is not None for r in resumed_records)
    assert resumed_records == store_records(project, "clean", ids)
    a, b = snapshot(run_dir), snapshot(clean.dir)
    assert a.num_rows == 400 and a.equals(b)

    again = hs("batch", "run", "daily", "--run-id", "killed", "-p", file, "--json")
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert json.loads(out)["published_at"] == done["published_at"]


def test_cli_exit_codes_and_commands(
    batch_project: Factory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    project = batch_project(
        {
            "daily": job({"view": "card_profile"}, chunk_rows=200),
            "bad": job({"path": "data/missing.parquet"}),
        }
    )
    write_input(project, cards(project).drop_columns(["amount_mean_30d"]), "missing.parquet")
    file = str(project.source_file)

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["hybridserve", *args, "-p", file])
        with pytest.raises(SystemExit) as exited:
            main()
        out, err = capsys.readouterr()
        return int(exited.value.code or 0), out, err

    code, out, err = run("batch", "run", "daily", "--run-id", "cli1", "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == "completed"
    code, out, _ = run("batch", "run", "daily", "--dry-run")
    assert code == 0 and "would score 400 rows in 2 chunks" in out
    code, _, err = run("batch", "run", "nope")
    assert code == 2 and "unknown batch job 'nope'" in err
    code, _, err = run("batch", "run", "bad")
    assert code == 2 and "no column(s) amount_mean_30d" in err
    code, _, err = run("batch", "run", "daily", "--chunk-rows", "0")
    assert code == 2
    code, _, err = run("batch", "run", "daily", "--run-id", "cli1", "--chunk-rows", "7")
    assert code == 2 and "uses --chunk-rows 200" in err
    code, out, err = run("batch", "status", "daily", "--json")
    assert code == 0 and [r["run_id"] for r in json.loads(out)] == ["cli1"]
    code, out, _ = run("batch", "show", "cli1", "--json")
    assert code == 0 and json.loads(out)["rows_scored"] == 400
    code, _, err = run("batch", "show", "nope")
    assert code == 1 and "no batch run 'nope'" in err
    code, out, _ = run("batch", "list", "--json")
    assert code == 0 and {"daily", "bad"} <= {j["job"] for j in json.loads(out)}
