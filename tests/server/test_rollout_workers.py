"""``serve --workers 2``: a rollout started and aborted by command reaches both workers within
seconds, without a restart (each follows the registry every ``server.reload_interval``)."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from fraud_versions import add_fraud_version_offline
from hybridserve.config import Project
from hybridserve.routing.rollout import in_share

pytestmark = pytest.mark.slow
CARDS = [f"card_{i:06d}" for i in range(100)]


@pytest.fixture
def worker_route_changes() -> dict[str, Any]:
    # Guardrails a busy test machine keeps: this test is about following, not judging.
    return {"rollout": {"guardrails": {"max_p99": "60s", "min_samples": 100_000}}}


def _rollout(project: Project, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hybridserve", "rollout", *args, "-p", str(project.base_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def _until(client: httpx.Client, expected: dict[str, int], what: str) -> None:
    """Until 20 answers in a row (new connections, so both workers answer) match."""
    started = time.monotonic()
    streak, i = 0, 0
    while streak < 20:
        assert time.monotonic() - started < 10.0, f"a worker does not follow: {what}"
        card = CARDS[i % len(CARDS)]
        i += 7
        r = client.post("/v1/predict/fraud", json={"entity": card, "mode": "compute"})
        assert r.status_code == 200, r.text
        got = r.json()["predictions"][0]["model_version"]
        streak = streak + 1 if got == expected[card] else 0
    print(f"{what}: every worker followed {time.monotonic() - started:.2f} s after")


def test_both_workers_follow_a_rollout_started_and_aborted_by_command(
    two_workers: tuple[str, Project],
) -> None:
    base, project = two_workers
    assert add_fraud_version_offline(project) == 2
    client = httpx.Client(
        base_url=base, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
    )
    with client:
        _rollout(
            project, "start", "fraud@2", "--steps", "50,100", "--no-shadow", "--min-time", "1h"
        )
        split = {c: 2 if in_share(c, 50, "fraud") else 1 for c in CARDS}
        assert 20 < sum(v == 2 for v in split.values()) < 80
        _until(client, split, "start")
        _rollout(project, "abort", "fraud@2")
        _until(client, dict.fromkeys(CARDS, 1), "abort")
