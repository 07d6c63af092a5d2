"""The same run on Redis, and on the Ray executor: same records, same snapshot."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Callable

import pytest
from batch_helpers import cards, job, snapshot, store_records, write_input

from backends import redis_url
from hybridserve.batch import run_job
from hybridserve.config import Project

Factory = Callable[..., Project]


@pytest.mark.redis
def test_run_on_redis_with_a_process_pool(batch_project: Factory) -> None:
    import redis

    url = redis_url()
    prefix = f"hs-test-{uuid.uuid4().hex[:8]}:"
    project = batch_project(
        {"daily": job({"path": "data/cards.parquet"}, workers=2)},
        stores={"online": "sqlite:///.hybridserve/online.db", "predictions": url, "prefix": prefix},
    )
    source = cards(project)
    write_input(project, source)
    try:
        m = run_job(project, "daily", run_id="on-redis")
        assert m.status == "completed" and m.total("scored") == 400
        records = store_records(project, "on-redis", source["card_id"].to_pylist())
        assert all(r is not None and r["source"] == "batch" for r in records)
        client = redis.Redis.from_url(url)
        assert client.exists(f"{prefix}run:fraud")
    finally:
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_ray_executor_matches_local(batch_project: Factory) -> None:
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed: pip install 'hybridserve[ray]' to run this test")
    project = batch_project({"daily": job({"path": "data/cards.parquet"}, chunk_rows=100)})
    source = cards(project)
    write_input(project, source)
    local = run_job(project, "daily", run_id="local", workers=1, snapshot_at=1.8e9)
    on_ray = run_job(project, "daily", run_id="ray", executor="ray", workers=2, snapshot_at=1.8e9)
    assert on_ray.status == "completed" and on_ray.chunks_done == [0, 1, 2, 3]
    assert on_ray.executor == "ray" and on_ray.total("scored") == 400
    ids = source["card_id"].to_pylist()
    assert store_records(project, "ray", ids) == store_records(project, "local", ids)
    assert snapshot(on_ray.dir).equals(snapshot(local.dir))
