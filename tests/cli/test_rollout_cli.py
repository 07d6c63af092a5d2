"""``hybridserve rollout ...`` as a user runs it: start, status, pause, resume, abort."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from cli_run import Ran
from cli_run import hs as run_cli
from fraud_versions import add_fraud_version_offline
from hybridserve.config import Project


def test_the_rollout_commands(
    make_project: Callable[..., Project], capsys: pytest.CaptureFixture[str]
) -> None:
    project = make_project()
    add_fraud_version_offline(project)

    def hs(*args: str) -> Ran:
        return run_cli(capsys, "rollout", *args, "-p", str(project.base_dir))

    assert "fraud@production already points at version 1" in hs("start", "fraud@1").stderr
    assert "MODEL@VERSION" in hs("start", "fraud").stderr
    bad = hs("start", "fraud@2", "--steps", "50,5")
    assert bad.returncode == 1 and "steps: expected rising canary percents" in bad.stderr
    started = hs("start", "fraud@2", "--steps", "10,100", "--min-time", "5m", "--json")
    assert started.returncode == 0, started.stderr
    plan: dict[str, Any] = orjson.loads(started.stdout)
    assert (plan["stage"], plan["shadow_percent"], plan["stages"]) == ("shadow", 100.0, 3)
    assert [s["min_time"] for s in plan["plan"]["steps"]] == [300.0, 300.0]
    assert "already has rollout" in hs("start", "fraud@2").stderr

    (status,) = orjson.loads(hs("status", "--json").stdout)
    assert status["state"] == "running" and status["figures"]["candidate"]["answers"] == 0
    assert (
        status["waiting"][0].startswith("time ") and status["moves"][0]["action"] == "rollout_start"
    )
    text = hs("status", "fraud@2").stdout
    assert (
        "rollout 1: fraud/2 on fraud running, step 1 of 3 (shadow" in text and "waiting for" in text
    )

    assert "paused" in hs("pause", "fraud@2").stdout
    assert "cannot pause" in hs("pause", "fraud@2").stderr
    assert "running" in hs("resume", "fraud@2").stdout
    assert "aborted" in hs("abort", "fraud@2").stdout
    assert hs("status").stdout.strip() == "no rollout in progress"
    (done,) = orjson.loads(hs("status", "fraud@2", "--json").stdout)
    assert [m["action"] for m in done["moves"]] == [
        "rollout_start",
        "rollout_pause",
        "rollout_resume",
        "rollout_abort",
    ]
