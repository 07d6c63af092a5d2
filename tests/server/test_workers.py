"""``serve --workers 2``: one scrape sums both workers, and an admin promote through one worker
reaches the other within a second."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest_server import free_port
from fraud_versions import add_fraud_version_offline
from hybridserve.config import Project

MakeProject = Callable[..., Project]
pytestmark = pytest.mark.slow


@pytest.fixture
def two_workers(make_project: MakeProject) -> Iterator[tuple[str, Project]]:
    project = make_project()
    port = free_port()
    log = (project.base_dir / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "hybridserve", "serve", "-p", str(project.base_dir)),
            *("--port", str(port), "--workers", "2", "--no-access-log", "--log-level", "info"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (project.base_dir / "server.log").read_text()
            assert time.monotonic() < deadline, "the workers did not start"
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        # Both workers ready: each answers on its own, so wait until two pids have logged it.
        while (project.base_dir / "server.log").read_text().count('"ready: ') < 2:
            assert time.monotonic() < deadline, "the second worker did not start"
            time.sleep(0.2)
        yield base, project
    finally:
        proc.terminate()
        proc.wait(30)


def _answered(text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "hybridserve_requests_total":
                total += sample.value
    return total


def _fresh_client(base: str) -> httpx.Client:
    # No keep-alive: every request is a new connection, which the kernel may give to either
    # worker.
    return httpx.Client(base_url=base, timeout=10, limits=httpx.Limits(max_keepalive_connections=0))


def test_one_scrape_sums_both_workers(two_workers: tuple[str, Project]) -> None:
    base, _ = two_workers
    with _fresh_client(base) as client:
        for i in range(120):
            r = client.post("/v1/predict/fraud", json={"entity": f"card_{i % 400:06d}"})
            assert r.status_code == 200, r.text
        time.sleep(1.5)  # every worker has written its snapshot since
        for _ in range(6):
            r = client.get("/metrics")
            assert _answered(r.text) == 120, r.text[:2000]


def test_a_promote_through_one_worker_reaches_the_other_within_a_second(
    two_workers: tuple[str, Project],
) -> None:
    base, project = two_workers
    version = add_fraud_version_offline(project)  # registered, not yet served
    with _fresh_client(base) as client:
        r = client.post("/v1/admin/models/fraud/promote", json={"version": version})
        assert r.status_code == 200, r.text
        promoted = time.monotonic()
        # Until 20 answers in a row (new connections, so both workers answer some) come from
        # the new version. reload_interval is 0.5 s; loading a version takes some more. The
        # bound is loose for a busy machine: the time it took is printed.
        streak = 0
        while streak < 20:
            assert time.monotonic() - promoted < 5.0, "a worker still serves the old version"
            r = client.post("/v1/predict/fraud", json={"entity": "card_000001", "mode": "compute"})
            streak = streak + 1 if r.json()["predictions"][0]["model_version"] == version else 0
        print(f"every worker on fraud/{version} {time.monotonic() - promoted:.2f} s after")
