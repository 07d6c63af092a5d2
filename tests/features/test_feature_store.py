from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from hybridserve.config import Project, project_from_dict
from hybridserve.errors import ConfigError, FeatureViewNotFound
from hybridserve.features.materialize import materialize
from hybridserve.features.online import OnlineFeatureStore, merge_request_features
from hybridserve.records import now
from hybridserve.storage import open_store


def make_project(tmp_path: Path, source: str = "profile.parquet") -> Project:
    return project_from_dict(
        {
            "entities": {"card": {"key": "card_id"}},
            "feature_views": {
                "profile": {
                    "entity": "card",
                    "ttl": "1h",
                    "source": {"path": source, "timestamp": "ts"},
                    "features": {"a": "float", "b": "float"},
                },
                "windows": {"entity": "card", "ttl": "10m", "features": {"cnt": "int"}},
            },
            "routes": {
                "r": {
                    "model": "m@production",
                    "entity": "card",
                    "features": ["profile", "windows:cnt"],
                }
            },
        },
        base_dir=tmp_path,
    )


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def table() -> pa.Table:
    return pa.table(
        {
            "card_id": ["c1", "c1", "c2", "c3", "c1", None],
            "ts": [
                ts("2026-01-01T00:00"),
                ts("2026-01-01T02:00"),
                ts("2026-01-01T01:00"),
                ts("2026-01-02T00:00"),
                ts("2026-01-03T00:00"),
                ts("2026-01-01T00:00"),
            ],
            "a": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "b": [10.0, None, 30.0, 40.0, 50.0, 60.0],
        }
    )


async def test_read_reports_value_age_and_status(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    store = OnlineFeatureStore(project, open_store("memory://"))
    t = now()
    await store.write(
        "profile",
        [("fresh", {"a": 1.0, "b": None}, t - 60), ("old", {"a": 2.0, "b": 3.0}, t - 7200)],
    )
    await store.write("windows", [("fresh", {"cnt": 4}, t - 30)])
    fresh, old, absent = await store.read_route("r", ["fresh", "old", "absent"], at=t)
    assert fresh.values["a"].status == "present" and fresh.values["a"].value == 1.0
    assert fresh.values["a"].age == pytest.approx(60)
    assert fresh.values["b"].status == "missing"
    assert fresh.values["cnt"].value == 4 and fresh.values["cnt"].age == pytest.approx(30)
    assert fresh.as_of == pytest.approx(t - 60)  # the stalest present input
    assert old.values["a"].status == "stale" and old.values["a"].age == pytest.approx(7200)
    assert old.values["cnt"].status == "missing"
    assert old.plain() == {"a": None, "b": None, "cnt": None}
    assert old.as_of is None
    assert {v.status for v in absent.values.values()} == {"missing"}


async def test_request_features_override_stored(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    store = OnlineFeatureStore(project, open_store("memory://"))
    await store.write("profile", [("c", {"a": 1.0, "b": 2.0}, 100.0)])
    (row,) = await store.read_route("r", ["c"], at=120.0)
    assert merge_request_features(row, {"a": 9.0}, 120.0)["a"] == 9.0
    (row,) = await store.read_route("r", ["nobody"], at=120.0)
    merge_request_features(row, {"a": 9.0}, 120.0)
    assert row.as_of == 120.0


async def test_older_write_does_not_replace_fresher_features(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    store = OnlineFeatureStore(project, open_store("memory://"))
    assert await store.write("profile", [("c", {"a": 2.0, "b": 2.0}, 200.0)]) == 1
    assert await store.write("profile", [("c", {"a": 1.0, "b": 1.0}, 100.0)]) == 0
    (row,) = await store.read({"profile": ["a"]}, ["c"], at=200.0)
    assert row.values["a"].value == 2.0
    with pytest.raises(FeatureViewNotFound):
        await store.write("nope", [])


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
async def test_materialize_latest_row_as_of(tmp_path: Path, table: pa.Table, fmt: str) -> None:
    source = f"profile.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, tmp_path / source)
    else:
        pacsv.write_csv(table, tmp_path / source)
    project = make_project(tmp_path, source)
    store = OnlineFeatureStore(project, open_store(f"sqlite:///{tmp_path}/online.db"))
    seen: list[tuple[int, int]] = []
    result = await materialize(
        project,
        store,
        "profile",
        as_of=ts("2026-01-02T12:00").timestamp(),
        chunk_rows=1,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert (result.rows_read, result.entities, result.written) == (6, 3, 3)
    assert seen[-1] == (3, 3)
    at = ts("2026-01-02T00:30").timestamp()
    rows = {
        r.entity: r for r in await store.read({"profile": ["a", "b"]}, ["c1", "c2", "c3"], at=at)
    }
    assert rows["c1"].values["a"].value == 2.0  # the 2026-01-03 row is after as_of
    assert rows["c1"].values["b"].status == "missing"  # null in the source
    assert rows["c3"].values["a"].value == 4.0 and rows["c3"].values["a"].status == "present"
    assert rows["c2"].values["a"].status == "stale"  # 1 h TTL, 23.5 h old
    # Materializing again changes nothing; a later as_of moves c1 forward.
    again = await materialize(project, store, "profile", as_of=ts("2026-01-02T12:00").timestamp())
    assert again.written == 3
    later = await materialize(project, store, "profile", as_of=ts("2026-01-04T00:00").timestamp())
    assert later.entities == 3
    (c1,) = await store.read({"profile": ["a"]}, ["c1"], at=at)
    assert c1.values["a"].value == 5.0


async def test_materialize_reports_missing_source_and_columns(
    tmp_path: Path, table: pa.Table
) -> None:
    project = make_project(tmp_path)
    store = OnlineFeatureStore(project, open_store("memory://"))
    with pytest.raises(ConfigError, match=r"feature_views\.profile\.source\.path: file not found"):
        await materialize(project, store, "profile")
    pq.write_table(table.drop_columns(["b"]), tmp_path / "profile.parquet")
    with pytest.raises(ConfigError, match=r"has no column.*b"):
        await materialize(project, store, "profile")
