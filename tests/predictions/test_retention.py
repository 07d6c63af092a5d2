"""Retention: predictions and features expire after the project's retention, old runs go."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridserve.config import Project, project_from_dict
from hybridserve.errors import ConfigError
from hybridserve.features.online import OnlineFeatureStore, feature_key
from hybridserve.predictions.store import PredictionStore, prediction_key, run_name
from hybridserve.records import PredictionRecord, now
from hybridserve.storage import open_store


def project(tmp_path: Path, **stores: object) -> Project:
    return project_from_dict(
        {
            "stores": {"online": f"sqlite:///{tmp_path}/online.db", **stores},
            "entities": {"card": {"key": "card_id"}},
            "feature_views": {
                "profile": {"entity": "card", "features": {"a": "float"}},
                "windows": {"entity": "card", "ttl": "30d", "features": {"cnt": "int"}},
            },
            "routes": {"r": {"model": "m@production", "entity": "card", "features": ["profile"]}},
        },
        base_dir=tmp_path,
    )


def record(entity: str, as_of: float, run_id: str | None = None) -> PredictionRecord:
    return PredictionRecord(
        entity=entity, route="r", score=0.5, model="m", model_version=1, source="batch",
        as_of=as_of, computed_at=as_of, run_id=run_id,
    )  # fmt: skip


def test_retention_settings_come_from_the_project_file(tmp_path: Path) -> None:
    default = project(tmp_path).stores
    assert (default.prediction_retention, default.feature_retention) == (7 * 86400, 7 * 86400)
    assert default.keep_runs == 2
    set_ = project(tmp_path, prediction_retention="1h", feature_retention="2d", keep_runs=3).stores
    assert (set_.prediction_retention, set_.feature_retention, set_.keep_runs) == (
        3600,
        2 * 86400,
        3,
    )
    forever = project(tmp_path, prediction_retention=None, feature_retention=None).stores
    assert forever.prediction_retention is None and forever.feature_retention is None
    with pytest.raises(ConfigError, match=r"stores\.keep_runs"):
        project(tmp_path, keep_runs=1)


async def test_predictions_and_features_expire_after_their_retention(tmp_path: Path) -> None:
    proj = project(tmp_path, prediction_retention="1h", feature_retention="2d")
    kv = open_store(proj.url(proj.stores.online), proj.stores.prefix)
    try:
        preds = PredictionStore.open(proj, kv)
        old = now() - 30 * 86400  # made from month-old features: still kept (written now)
        await preds.put([record("c1", old)])
        await preds.put_run("run1", [record("c2", old, "run1")])
        features = OnlineFeatureStore(proj, kv)
        await features.write("profile", [("c1", {"a": 1.0}, old)])
        await features.write("windows", [("c1", {"cnt": 3}, old)])
        at = now()
        p, f, w = await kv.get_many(
            [prediction_key("r", "c1"), feature_key("profile", "c1"), feature_key("windows", "c1")]
        )
        (r,) = await kv.get_run(run_name("r", "run1"), ["c2"])
        assert p is not None and p.expires_at == pytest.approx(at + 3600, abs=30)
        assert r is not None and r.expires_at == pytest.approx(at + 3600, abs=30)
        assert f is not None and f.expires_at == pytest.approx(at + 2 * 86400, abs=30)
        # A view's ttl longer than the retention wins: a servable value is never dropped.
        assert w is not None and w.expires_at == pytest.approx(at + 30 * 86400, abs=30)
    finally:
        await kv.close()


async def test_publish_keeps_keep_runs_runs(tmp_path: Path) -> None:
    proj = project(tmp_path, keep_runs=3)
    kv = open_store(proj.url(proj.stores.online), proj.stores.prefix)
    try:
        store = PredictionStore.open(proj, kv)
        runs = ["a", "b", "c", "d", "e"]
        for run in runs:
            await store.put_run(run, [record("c1", now(), run)])
            await store.publish("r", run)
        kept = [run for run in runs if (await store.get_run("r", run, ["c1"]))[0] is not None]
        assert kept == ["c", "d", "e"]
        pointer = await store.current_run("r")
        assert pointer is not None and (pointer.run_id, pointer.previous) == ("e", "d")
        assert pointer.kept == ("c",)
        # Publishing an older kept run again does not drop it.
        await store.publish("r", "c")
        assert (await store.get_run("r", "c", ["c1"]))[0] is not None
    finally:
        await kv.close()
