"""A batch run records its input's drift against the version's reference in its manifest,
and logs its sampled answers (with their features) when the route samples batch answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from batch_helpers import cards, job, write_input

from hybridserve.batch import run_job
from hybridserve.batch.manifest import show
from hybridserve.quality.sinks import open_sink

pytestmark = pytest.mark.slow


def test_the_manifest_holds_the_inputs_drift(batch_project: Callable[..., Any]) -> None:
    proj = batch_project(
        {"calm": job({"path": "data/calm.parquet"}), "moved": job({"path": "data/moved.parquet"})}
    )
    table = cards(proj)
    write_input(proj, table, "calm.parquet")
    moved = table.set_column(
        table.schema.get_field_index("utilization"),
        "utilization",
        pc.add(pc.multiply(table["utilization"], 3.0), 1.0),
    )
    write_input(proj, moved, "moved.parquet")
    calm = run_job(proj, "calm", workers=1)
    drift = show(proj, calm.run_id).drift
    assert drift is not None and drift["reference"] == calm.model_ref
    assert drift["drifted"] == []
    assert {f["feature"] for f in drift["features"]} >= {"utilization", "amount_mean_30d"}
    assert drift["score"] is not None and drift["score"]["n"] == table.num_rows
    from typer.testing import CliRunner

    from hybridserve.cli import app

    out = CliRunner().invoke(app, ["batch", "show", calm.run_id, "-p", str(proj.base_dir)])
    assert out.exit_code == 0 and "none of" in out.output
    shifted = show(proj, run_job(proj, "moved", workers=1).run_id).drift
    assert shifted is not None
    assert [d.split(":")[0] for d in shifted["drifted"] if d.startswith("feature")] == [
        "feature utilization"
    ]


def test_a_sampled_batch_run_logs_its_answers(make_project: Callable[..., Any]) -> None:
    proj = make_project({"batch_jobs": {"all": job({"path": "data/all.parquet"})}})
    assert proj.routes["fraud"].log.batch == 0.0  # off by default
    proj = make_project(log={"batch": 1.0})
    table: pa.Table = cards(proj).slice(0, 50)
    write_input(proj, table, "all.parquet")
    m = run_job(proj, "all", workers=1)
    sink = open_sink(proj)
    rows = sink.read("predictions", "fraud")
    assert len(rows) == 50 and {r["run_id"] for r in rows} == {m.run_id}
    assert {r["source"] for r in rows} == {"batch"}
    first = rows[0]
    assert set(orjson.loads(first["features"])) >= {"utilization", "amount_mean_30d"}


def test_each_chunk_counts_its_rows_and_the_report_adds_them_up(
    batch_project: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    from hybridserve.batch import chunk as chunk_module
    from hybridserve.batch.drift import drift_file
    from hybridserve.quality.drift import drift_of_counts
    from hybridserve.quality.profile import Profile, bin_counts
    from hybridserve.registry import Registry

    proj = batch_project({"all": job({"path": "data/all.parquet"}, workers=2)})
    table = cards(proj)
    write_input(proj, table, "all.parquet")
    m = run_job(proj, "all")
    assert m.total_chunks == 20
    assert all(drift_file(m.dir, i).exists() for i in range(m.total_chunks))
    report = show(proj, m.run_id).drift
    assert report is not None and "uncounted_chunks" not in report
    with Registry.from_project(proj) as registry:
        found = registry.reference(m.model, m.model_version)
    assert found is not None
    profile, cfg = Profile.from_dict(found), proj.route(m.route).drift
    # The whole input counted at once gives the same figures as the chunks added up.
    for got in report["features"]:
        ref = profile.features[got["feature"]]
        counts, missing, total = bin_counts(ref, table[got["feature"]].to_numpy())
        expected = drift_of_counts(got["feature"], ref, counts, missing, total, cfg)
        assert got == expected.to_dict()
    assert {f["feature"] for f in report["features"]} == set(profile.features)
    scores = np.concatenate(
        [pq.read_table(f"{m.dir}/chunk-{i:06d}.parquet")["score"].to_numpy() for i in range(20)]
    )
    assert profile.score is not None
    counts, missing, total = bin_counts(profile.score, scores)
    expected = drift_of_counts("score", profile.score, counts, missing, total, cfg)
    assert report["score"] == expected.to_dict() and expected.n == table.num_rows

    # A chunk whose worker cannot count it is named, and the run still completes.
    real = chunk_module.tally_chunk

    def failing(profile: Any, names: Any, rows: pa.Table, *rest: Any) -> Any:
        if rows.num_rows and rows["card_id"][0].as_py() == table["card_id"][60].as_py():
            raise ValueError("cannot count")
        return real(profile, names, rows, *rest)

    monkeypatch.setattr(chunk_module, "tally_chunk", failing)
    one = run_job(proj, "all", workers=1)
    assert one.status == "completed"
    partial = show(proj, one.run_id).drift
    assert partial is not None and partial["uncounted_chunks"] == [3]
    assert report["score"]["n"] - partial["score"]["n"] == 20
