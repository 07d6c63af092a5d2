"""Bad rows are rejected with a reason, never crash a run: entity keys, duplicates, text cells."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest

from conftest import cards, job, snapshot, write_input
from hybridserve.batch import run_job
from hybridserve.config import Project

Factory = Callable[..., Project]


def rejected(run_dir: str) -> dict[int, tuple[str | None, str]]:
    table = snapshot(run_dir, "rejected")
    return {r["row"]: (r["entity"], r["reason"]) for r in table.to_pylist()}


def test_unusable_and_duplicate_keys_are_rejected(batch_project: Factory) -> None:
    project = batch_project(
        {"daily": job({"path": "data/keys.parquet"}, max_reject_share=0.05, workers=2)}
    )
    source = cards(project)
    keys = [float(i) for i in range(source.num_rows)]
    keys[3], keys[4], keys[5] = float("nan"), float("inf"), None  # type: ignore[call-overload]
    keys[45] = keys[2]  # chunk 2 repeats a key of chunk 0
    keys[47] = keys[45]
    table = source.set_column(0, "card_id", pa.array(keys, pa.float64()))
    assert source.column_names[0] == "card_id"
    write_input(project, table, "keys.parquet")
    m = run_job(project, "daily", run_id="keys")
    assert m.status == "completed"
    assert (m.total("scored"), m.total("rejected")) == (395, 5)
    assert rejected(m.dir) == {
        3: (None, "entity key 'card_id' is missing"),
        4: (None, "entity key 'card_id': expected a finite number, got inf"),
        5: (None, "entity key 'card_id' is missing"),
        45: ("2", "duplicate entity key (first at row 2)"),
        47: ("2", "duplicate entity key (first at row 2)"),
    }
    snap = snapshot(m.dir)  # asserts one record per entity
    first = snap.filter(pc.equal(snap["entity"], "2"))
    assert first.num_rows == 1


def test_duplicate_rule_holds_across_chunks_and_resume(batch_project: Factory) -> None:
    project = batch_project({"daily": job({"path": "data/cards.csv"}, max_reject_share=0.05)})
    source = cards(project)
    ids = source["card_id"].to_pylist()
    ids[7], ids[8] = "", "NaN"
    ids[70] = ids[65] = ids[1]  # the later rows, in chunk 3 of 20 rows, repeat row 1
    csv = source.set_column(0, "card_id", pa.array(ids))
    pacsv.write_csv(csv, project.path("data/cards.csv"))
    stop = [2]

    def interrupt(done: int, total: int) -> None:
        if done >= 40 and stop:
            stop.pop()
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_job(project, "daily", run_id="resumed", progress=interrupt)
    resumed = run_job(project, "daily", run_id="resumed")
    clean = run_job(project, "daily", run_id="clean", snapshot_at=resumed.snapshot_at)
    for m in (resumed, clean):
        assert m.status == "completed"
        assert (m.total("scored"), m.total("rejected")) == (396, 4)
        assert rejected(m.dir) == {
            7: (None, "entity key 'card_id' is missing"),
            8: (None, "entity key 'card_id' is missing"),
            65: (ids[1], "duplicate entity key (first at row 1)"),
            70: (ids[1], "duplicate entity key (first at row 1)"),
        }
    assert snapshot(resumed.dir).equals(snapshot(clean.dir))


def test_bad_csv_cells_reject_only_their_rows(batch_project: Factory) -> None:
    project = batch_project(
        {
            "csv": job({"path": "data/cards.csv"}, max_reject_share=0.05, chunk_rows=100),
            "parquet": job({"path": "data/cards.parquet"}, chunk_rows=100),
        }
    )
    source = cards(project)
    write_input(project, source)
    col = source.schema.get_field_index("amount_mean_30d")
    text = pc.cast(source["amount_mean_30d"], pa.string()).to_pylist()
    bad = [10, 11, 150, 151, 399]
    for i in bad:
        text[i] = "abc"
    pacsv.write_csv(
        source.set_column(col, "amount_mean_30d", pa.array(text)), project.path("data/cards.csv")
    )
    m = run_job(project, "csv", run_id="csv")
    assert m.status == "completed"
    assert (m.total("scored"), m.total("rejected")) == (395, 5)
    ids = source["card_id"].to_pylist()
    assert rejected(m.dir) == {
        i: (ids[i], "feature 'amount_mean_30d': expected a number, got 'abc'") for i in bad
    }
    raw = json.loads(snapshot(m.dir, "rejected")["raw"][0].as_py())
    assert raw["amount_mean_30d"] == "abc"
    # The valid rows score as they do from Parquet.
    reference = run_job(project, "parquet", run_id="parquet", snapshot_at=m.snapshot_at)
    expected = snapshot(reference.dir).filter(
        pc.invert(pc.is_in(snapshot(reference.dir)["entity"], pa.array([ids[i] for i in bad])))
    )
    got = snapshot(m.dir)
    assert got["entity"].to_pylist() == expected["entity"].to_pylist()
    assert got["score"].to_pylist() == pytest.approx(expected["score"].to_pylist(), rel=1e-12)


def test_duplicate_keys_are_exact_even_when_hashes_collide(monkeypatch: pytest.MonkeyPatch) -> None:
    from hybridserve.batch import checks

    keys = ["a", "b", "a", "c", None, "b", "a"]
    chunks = [(0, pa.table({"k": keys[:4]})), (1, pa.table({"k": [*keys[4:], None]}))]
    expected = {"a": 0, "b": 1}
    assert checks.duplicate_keys(chunks, "k", 4) == expected
    assert checks.duplicate_keys([(0, pa.table({"k": ["x", "y"]}))], "k", 4) == {}
    # Every key hashing alike only costs the exact second pass, never a wrong answer.
    monkeypatch.setattr(checks, "key_hash", lambda names: np.zeros(len(names), np.uint64))
    assert checks.duplicate_keys(chunks, "k", 4) == expected
    assert checks.duplicate_keys([(0, pa.table({"k": ["x", "y"]}))], "k", 4) == {}
