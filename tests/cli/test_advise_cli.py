"""``hybridserve advise fraud`` on the example project after a batch run: the three modes,
their costs, and a choice that follows from the numbers it prints."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from cli_run import Ran
from cli_run import hs as run_cli
from hybridserve.batch.runner import run_job
from hybridserve.config import load_project


def test_advise_prints_the_three_modes_and_the_cheapest_fresh_one(
    trained_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "project"
    shutil.copytree(trained_dir, project)

    def hs(project: Path, *args: str) -> Ran:
        return run_cli(capsys, "advise", "fraud", "-p", str(project), *args)

    missing = hs(project)
    assert missing.returncode != 0 and "hybridserve batch run fraud_daily" in missing.stderr
    run_job(load_project(project), "fraud_daily")

    out = hs(project, "--rate", "50")
    assert out.returncode == 0, out.stderr
    for line in ("batch-only", "online-only", "hybrid", "choice: ", "numbers used:"):
        assert line in out.stdout, out.stdout
    assert "online_core_s_per_answer" in out.stdout and "measured here" in out.stdout

    data = orjson.loads(hs(project, "--rate", "50", "--json", "--what-if", "rate=5000").stdout)
    advice = data["advice"]
    assert advice["inputs"]["requests_per_s"] == 50
    assert advice["inputs"]["entities"] == 400  # the run's rows
    fresh = [m for m in advice["modes"] if m["meets_freshness"]]
    cheapest = min(fresh, key=lambda m: m["cost_per_day"])
    assert advice["choice"] == cheapest["mode"]
    assert f"choice: {advice['choice']}" in out.stdout
    assert data["what_if"]["inputs"]["requests_per_s"] == 5000
    online = {m["mode"]: m for m in data["what_if"]["modes"]}["online-only"]
    # Online cost is linear in traffic: a hundred times the requests, a hundred times the cost.
    base = {m["mode"]: m for m in advice["modes"]}["online-only"]
    assert online["cost_per_day"] == pytest.approx(base["cost_per_day"] * 100)
    assert data["sources"]["batch_core_s_per_row"].startswith("batch run fraud_daily")
