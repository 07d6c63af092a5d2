"""The Ray executor on a real two-node Ray cluster (a head and a second node, each its own
raylet): the same records and snapshot as the local executor. A cluster run on embedded stores
is refused naming the setting; a node that cannot reach a path is named with its setting."""

from __future__ import annotations

import importlib.util
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backends import postgres_schema, redis_url, unavailable
from conftest import ROUTE, cards, job, snapshot, store_records, write_input
from hybridserve.batch import run_job
from hybridserve.batch.cluster import node_problems, refuse
from hybridserve.config import Project
from hybridserve.errors import ConfigError
from hybridserve.registry import Registry

Factory = Callable[..., Project]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A head node and a second node, one CPU each: two actors must land on two nodes."""
    if importlib.util.find_spec("ray") is None:
        unavailable("Ray", "ray is not installed", "pip install 'hybridserve[ray]'")
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()  # kills each node's processes by PID


def to_registry(project: Project, url: str, artifacts: Path) -> None:
    """Register the project's production fraud model in the registry at ``url``."""
    with Registry.from_project(project) as local:
        mv = local.get(project.route(ROUTE).model)
        source = local.artifacts.path(str(mv.artifact))
    with Registry.open(url, artifacts) as shared:
        copy = shared.register(
            mv.name, source, flavour=mv.flavour, features=mv.signature.names, task=mv.task
        )
        shared.set_alias(mv.name, "production", copy.version)


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.timeout(400)  # 30-40 s alone; far more with the machine's cores taken
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_two_node_ray_cluster_matches_local(
    batch_project: Factory, ray_cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    url, prefix = redis_url(), f"hs-test-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(url)
    try:
        with postgres_schema() as registry_url:
            project = batch_project(
                {
                    "daily": job(
                        {"path": "data/cards.parquet"},
                        chunk_rows=100,
                        ray_address=ray_cluster.address,
                    )
                },
                stores={"predictions": url, "prefix": prefix},
            )
            to_registry(project, registry_url, project.path("shared-artifacts"))
            project = batch_project(
                {}, registry={"url": registry_url, "artifacts": "shared-artifacts"}
            )
            source = cards(project)
            write_input(project, source)
            local = run_job(project, "daily", run_id="local", workers=1, snapshot_at=1.8e9)
            with caplog.at_level(logging.INFO, logger="hybridserve.batch.ray_pool"):
                on_ray = run_job(
                    project,
                    "daily",
                    run_id="cluster",
                    executor="ray",
                    workers=2,
                    snapshot_at=1.8e9,
                )
            assert "ray: 2 actors on 2 node(s)" in caplog.text
            assert on_ray.status == "completed" and on_ray.chunks_done == [0, 1, 2, 3]
            assert on_ray.executor == "ray" and on_ray.total("scored") == 400
            ids = source["card_id"].to_pylist()
            assert store_records(project, "cluster", ids) == store_records(project, "local", ids)
            assert snapshot(on_ray.dir).equals(snapshot(local.dir))
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def test_cluster_run_on_an_embedded_store_is_refused(batch_project: Factory) -> None:
    project = batch_project(
        {"daily": job({"path": "data/cards.parquet"}, ray_address="ray://10.0.0.1:10001")}
    )
    write_input(project, cards(project))
    with pytest.raises(ConfigError) as info:
        run_job(project, "daily", run_id="cluster", executor="ray")
    message = str(info.value)
    assert message.startswith("batch_jobs.daily.ray_address: a run on a cluster needs stores")
    assert "the prediction store is embedded (sqlite://): set stores.predictions" in message
    assert "set registry.url to a PostgreSQL URL" in message
    assert not project.path(".hybridserve/runs/daily/cluster").exists(), "nothing may run"


def test_a_node_that_cannot_reach_a_path_is_named_with_its_setting(tmp_path: Path) -> None:
    present = tmp_path / "cards.parquet"
    present.write_bytes(b"x" * 10)
    runs = tmp_path / "runs"
    runs.mkdir()
    paths = {
        str(present): ("input", "batch_jobs.daily.input.path"),
        str(tmp_path / "gone.parquet"): ("input", "batch_jobs.daily.input.path"),
        str(tmp_path / "artifacts"): ("artifacts", "registry.artifacts"),
        str(runs): ("run directory", "batch_jobs.daily.runs_dir"),
    }
    sizes = {str(present): 10, str(tmp_path / "gone.parquet"): 10}
    assert node_problems(paths, sizes) == [
        str(tmp_path / "gone.parquet"),
        str(tmp_path / "artifacts"),
    ]
    assert node_problems(paths, {**sizes, str(present): 11})[0] == str(present), "another file"
    assert list(runs.iterdir()) == [], "the write probe cleans up"
    refuse({"10.0.0.1": []}, paths, "batch_jobs.daily.ray_address")  # all reachable: no error
    with pytest.raises(ConfigError) as info:
        refuse(
            {"10.0.0.1": [], "10.0.0.2": [str(tmp_path / "artifacts")]},
            paths,
            "batch_jobs.daily.ray_address",
        )
    assert str(info.value) == (
        f"batch_jobs.daily.ray_address: worker node 10.0.0.2 cannot reach artifacts "
        f"{tmp_path / 'artifacts'} (registry.artifacts): put them on storage every node "
        "mounts at the same path and point the settings named there at it"
    )
