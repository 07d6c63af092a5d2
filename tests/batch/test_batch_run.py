"""Batch runs in process: manifest, records, snapshot, rejects, --only-changed, --top-k-active."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from batch_helpers import ROUTE, cards, job, snapshot, store_records, write_input

from hybridserve.batch import RunFailed, run_job
from hybridserve.config import Project
from hybridserve.errors import ConfigError
from hybridserve.features.offline import epoch_seconds
from hybridserve.predictions.store import PredictionStore
from hybridserve.records import PredictionRecord
from hybridserve.storage import open_store

Factory = Callable[..., Project]


def open_predictions(project: Project) -> PredictionStore:
    url = project.url(project.stores.predictions_url)
    return PredictionStore(open_store(url, project.stores.prefix))


def current_run(project: Project) -> str | None:
    async def read() -> str | None:
        store = open_predictions(project)
        try:
            pointer = await store.current_run(ROUTE)
            return None if pointer is None else pointer.run_id
        finally:
            await store.kv.close()

    return asyncio.run(read())


def test_view_run_manifest_records_and_idempotent_rerun(batch_project: Factory) -> None:
    project = batch_project({"daily": job({"view": "card_profile"}, chunk_rows=150)})
    seen: list[tuple[int, int]] = []
    m = run_job(project, "daily", run_id="r1", progress=lambda d, t: seen.append((d, t)))
    assert m.status == "completed" and m.published_at is not None
    assert (m.model, m.model_version, m.route, m.job) == ("fraud", 1, ROUTE, "daily")
    assert m.chunks_done == [0, 1, 2] and m.total_chunks == 3 and m.total("scored") == 400
    assert seen[-1] == (400, 400)
    on_disk = json.loads((Path(m.dir) / "manifest.json").read_text())
    for key in ("run_id", "model", "model_version", "feature_fingerprint", "input", "snapshot_at"):
        assert on_disk[key] == getattr(m, key), key
    assert on_disk["status"] == "completed" and on_disk["rows_scored"] == 400
    assert on_disk["input"]["kind"] == "view" and on_disk["input"]["files"][0]["size"] > 0
    assert on_disk["chunks_done"] == [0, 1, 2] and on_disk["rows_rejected"] == 0
    assert current_run(project) == "r1"

    source = cards(project)
    entities = source["card_id"].to_pylist()
    times = dict(zip(entities, epoch_seconds(source["event_time"]).tolist(), strict=True))
    records = store_records(project, "r1", entities)
    assert all(r is not None for r in records)
    for r in records:
        assert r is not None
        assert r["source"] == "batch" and r["as_of"] == times[r["entity"]]
        assert r["computed_at"] == m.snapshot_at and r["model_version"] == 1
    snap = snapshot(m.dir)
    assert snap.num_rows == 400 and snap["score"].to_pylist() == [
        r["score"]
        for r in sorted(records, key=lambda r: r["entity"])  # type: ignore[index]
    ]

    before = (Path(m.dir) / "manifest.json").read_bytes()
    again = run_job(project, "daily", run_id="r1")
    assert again.status == "completed" and (Path(m.dir) / "manifest.json").read_bytes() == before


def test_dry_run_writes_nothing(batch_project: Factory) -> None:
    project = batch_project({"daily": job({"view": "card_profile"})})
    m = run_job(project, "daily", dry_run=True)
    assert m.status == "planned" and m.total_rows == 400 and m.total_chunks == 20
    assert not Path(m.dir).exists() and current_run(project) is None


def test_rejected_rows_file_and_share_threshold(batch_project: Factory) -> None:
    source = cards(batch_project({}))
    bad = np.zeros(source.num_rows, dtype=bool)
    bad[[3, 47, 200]] = True
    amount = pc.if_else(pa.array(bad), None, source["amount_mean_30d"])
    col = source.schema.get_field_index("amount_mean_30d")
    table = source.set_column(col, "amount_mean_30d", amount)
    jobs = {
        "lenient": job({"path": "data/cards.parquet"}, max_reject_share=0.01),
        "strict": job({"path": "data/cards.parquet"}, max_reject_share=0.005),
    }
    project = batch_project(jobs)
    write_input(project, table)
    m = run_job(project, "lenient", run_id="ok")
    assert m.status == "completed" and m.total("rejected") == 3 and m.total("scored") == 397
    rejects = snapshot(m.dir, "rejected").sort_by("row")
    assert rejects["row"].to_pylist() == [3, 47, 200]
    ids = source["card_id"].to_pylist()
    assert rejects["entity"].to_pylist() == [ids[3], ids[47], ids[200]]
    assert all("missing feature 'amount_mean_30d'" in r for r in rejects["reason"].to_pylist())
    raw = json.loads(rejects["raw"][0].as_py())
    assert raw["card_id"] == ids[3] and raw["amount_mean_30d"] is None
    assert store_records(project, "ok", [ids[3]]) == [None]

    with pytest.raises(RunFailed, match="3 rows rejected"):
        run_job(project, "strict", run_id="too-many")
    assert current_run(project) == "ok"  # a failed run is never published
    failed = json.loads((Path(m.dir).parent.parent / "strict/too-many/manifest.json").read_text())
    assert failed["status"] == "failed" and "max_reject_share" in failed["error"]


def test_only_changed_scores_changed_and_carries_the_rest(batch_project: Factory) -> None:
    project = batch_project({"daily": job({"path": "data/cards.parquet"})})
    source = cards(project)
    write_input(project, source)
    first = run_job(project, "daily", run_id="first")
    changed = np.zeros(source.num_rows, dtype=bool)
    changed[::40] = True  # 10 cards
    col = source.schema.get_field_index("declined_count_7d")
    bumped = pc.if_else(pa.array(changed), pc.add(source["declined_count_7d"], 5.0), source[col])
    write_input(project, source.set_column(col, "declined_count_7d", bumped))
    second = run_job(project, "daily", run_id="second", only_changed=True)
    assert second.previous_run == "first" and second.status == "completed"
    assert (second.total("scored"), second.total("carried")) == (10, 390)

    ids = source["card_id"].to_pylist()
    before, after = store_records(project, "first", ids), store_records(project, "second", ids)
    assert all(r is not None for r in after)  # the published run is complete
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        assert (a != b) if changed[i] else (a == b), ids[i]
    snap = snapshot(second.dir)
    assert snap.num_rows == 400
    old = snapshot(first.dir)
    moved = pa.array([ids[i] for i in np.flatnonzero(changed)])
    unchanged = pc.invert(pc.is_in(snap["entity"], moved))
    assert snap.filter(unchanged).equals(old.filter(unchanged))


def served(project: Project, entities: list[str]) -> list[PredictionRecord | None]:
    """What a reader gets per entity: the route's own record or the served run's, freshest."""

    async def read() -> list[PredictionRecord | None]:
        store = open_predictions(project)
        try:
            pointer = await store.current_run(ROUTE)
            return await store.get(
                ROUTE, entities, run_id=None if pointer is None else pointer.run_id
            )
        finally:
            await store.kv.close()

    return asyncio.run(read())


def test_top_k_active_scores_only_the_busiest(batch_project: Factory) -> None:
    project = batch_project({"warm": job({"view": "card_profile"}, activity_column="txn_count_7d")})
    m = run_job(project, "warm", run_id="warm1", top_k_active=25)
    assert m.total("scored") == 25 and m.total("skipped") == 375 and m.top_k_active == 25
    source = cards(project).sort_by([("txn_count_7d", "descending"), ("card_id", "ascending")])
    top = source["card_id"].to_pylist()[:25]
    assert sorted(snapshot(m.dir)["entity"].to_pylist()) == sorted(top)
    rest = source["card_id"].to_pylist()[25:]
    warmed = served(project, top)
    assert all(r is not None and r.run_id == "warm1" for r in warmed)
    assert served(project, rest[:50]) == [None] * 50


def test_warm_run_adds_to_the_served_run(batch_project: Factory) -> None:
    project = batch_project(
        {
            "daily": job({"path": "data/old.parquet"}),
            "warm": job({"path": "data/new.parquet"}, activity_column="txn_count_7d"),
        }
    )
    source = cards(project)
    col = source.schema.get_field_index("event_time")
    hour_ago = pc.subtract(source["event_time"], pa.scalar(3_600_000_000, pa.duration("us")))
    write_input(project, source.set_column(col, "event_time", hour_ago), "old.parquet")
    write_input(project, source, "new.parquet")
    run_job(project, "daily", run_id="full")
    ranked = source.sort_by([("txn_count_7d", "descending"), ("card_id", "ascending")])
    ids = ranked["card_id"].to_pylist()
    top, rest = ids[:10], ids[10:]
    # A fresher online record for one of the top entities: warming must not hide it.
    fresher = served(project, [top[0]])[0]
    assert fresher is not None
    fresher = replace(fresher, as_of=fresher.as_of + 86_400, source="online", run_id=None)

    async def put() -> None:
        store = open_predictions(project)
        try:
            await store.put([fresher])
        finally:
            await store.kv.close()

    asyncio.run(put())

    m = run_job(project, "warm", run_id="warm1", top_k_active=10)
    assert m.status == "completed" and m.total("scored") == 10
    assert current_run(project) == "full"  # the full run is still what is served
    answers = served(project, ids)
    assert all(a is not None for a in answers), "a warm run hid other entities' answers"
    by_entity = dict(zip(ids, answers, strict=True))
    assert by_entity[top[0]] == fresher
    assert {by_entity[e].run_id for e in top[1:]} == {"warm1"}  # type: ignore[union-attr]
    assert {by_entity[e].run_id for e in rest} == {"full"}  # type: ignore[union-attr]
    # Resuming (or re-running) a completed warm run changes nothing.
    assert run_job(project, "warm", run_id="warm1").published_at == m.published_at
    assert served(project, ids) == answers


def test_usage_errors(batch_project: Factory) -> None:
    project = batch_project({"daily": job({"view": "card_profile"})})
    with pytest.raises(ConfigError, match="unknown batch job 'nope'"):
        run_job(project, "nope")
    with pytest.raises(ConfigError, match="activity_column"):
        run_job(project, "daily", top_k_active=5)
    with pytest.raises(ConfigError, match="--run-id"):
        run_job(project, "daily", run_id="a:b")


def test_a_run_on_compiled_trees_scores_as_the_library_does(batch_project: Factory) -> None:
    """``compile: tl2cgen``: the first load builds and checks the library, the pool's workers
    score with it (without scikit-learn), and every record equals the library's own run but
    for the scores' last bits."""
    pytest.importorskip("tl2cgen")
    jobs = {"daily": job({"view": "card_profile"}, chunk_rows=100, workers=2)}
    fraud = batch_project(jobs).models["fraud"].model_dump(mode="json", exclude_unset=True)
    library = batch_project(jobs, models={"fraud": {**fraud, "compile": "none"}})
    want = snapshot(run_job(library, "daily", run_id="lib").dir)
    compiled = batch_project(jobs, models={"fraud": {**fraud, "compile": "tl2cgen"}})
    got = snapshot(run_job(compiled, "daily", run_id="tl").dir)
    artifacts = Path(compiled.registry.artifacts)
    artifacts = artifacts if artifacts.is_absolute() else compiled.base_dir / artifacts
    assert list(artifacts.rglob("*.tl2cgen-*.json"))  # checked once, kept for the workers
    assert got.num_rows == want.num_rows == 400
    np.testing.assert_allclose(
        got.column("score").to_numpy(), want.column("score").to_numpy(), rtol=1e-12, atol=1e-12
    )
    rest = [c for c in want.column_names if c not in ("score", "computed_at")]
    assert got.select(rest).equals(want.select(rest))
