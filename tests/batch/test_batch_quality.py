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
