"""``hybridserve log|feedback|quality|drift`` and ``registry reference`` on the trained fraud
project, whose versions carry the reference profile stored at training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from hybridserve.cli import app
from hybridserve.config import load_project
from hybridserve.quality.log import row
from hybridserve.quality.sinks import open_sink
from hybridserve.records import now

pytestmark = pytest.mark.slow


def hs(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


@pytest.fixture
def project_dir(trained_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "p"
    shutil.copytree(trained_dir, dest)
    return dest


def log_answers(project_dir: Path, shift: str | None) -> list[dict[str, Any]]:
    """The serving cards' features as logged answers of fraud/1 (``shift``: tripled)."""
    proj = load_project(project_dir, env=False)
    cards = pq.read_table(project_dir / "data" / "card_profile.parquet").to_pylist()
    names = list(proj.route_features("fraud")["card_profile"])
    t = now() - 60
    rows = []
    for i, card in enumerate(cards):
        values = {n: card[n] for n in names}
        if shift:
            values[shift] = values[shift] * 3 + 1
        score = (i % 97) / 97
        rows.append(
            row(
                ts=t + i / 1000,
                route="fraud",
                source="online",
                entity=card["card_id"],
                model="fraud",
                model_version=1,
                score=score,
                request_id=f"q{i}",
                features=values,
                latency_ms=1.5,
            )
        )
    sink = open_sink(proj)
    sink.append("predictions", "fraud", rows)
    sink.close()
    return rows


def test_log_feedback_quality_and_drift(project_dir: Path, tmp_path: Path) -> None:
    p = str(project_dir)
    rows = log_answers(project_dir, shift="utilization")
    tail = json.loads(hs("log", "tail", "fraud", "-n", "3", "-p", p, "--json"))
    assert [r["entity"] for r in tail] == [r["entity"] for r in rows[-3:]]
    one = rows[5]["entity"]
    found = json.loads(
        hs("log", "query", "fraud", "--entity", one, "--since", "1h", "-p", p, "--json")
    )
    assert [r["entity"] for r in found] == [one]
    assert "prediction log: fraud" in hs("log", "tail", "fraud", "-p", p)

    labels = [int(i % 3 == 0) for i in range(len(rows))]
    fb = tmp_path / "fb.parquet"
    pq.write_table(
        pa.table(
            {
                "id": [f"f{i}" for i in range(len(rows))],
                "label": labels,
                "request_id": [r["request_id"] for r in rows],
            }
        ),
        fb,
    )
    out = json.loads(hs("feedback", "load", str(fb), "--route", "fraud", "-p", p, "--json"))
    assert (out["accepted"], out["duplicates"]) == (len(rows), 0)
    again = json.loads(hs("feedback", "load", str(fb), "--route", "fraud", "-p", p, "--json"))
    assert (again["accepted"], again["duplicates"]) == (0, len(rows))
    q = json.loads(hs("quality", "fraud", "-p", p, "--json"))
    (v,) = q["versions"]
    assert (v["model"], v["version"], v["n"]) == ("fraud", 1, len(rows))
    assert v["roc_auc"] == pytest.approx(roc_auc_score(labels, [r["score"] for r in rows]))
    assert "calibration" in hs("quality", "fraud", "-p", p)

    d = json.loads(hs("drift", "fraud", "--window", "1h", "-p", p, "--json"))
    assert d["judged"] and d["model_version"] == 1
    drifted = [f["feature"] for f in d["features"] if f["drifted"]]
    assert drifted == ["utilization"]
    assert d["drifted"][0].startswith("feature utilization: PSI")
    assert "utilization" in hs("drift", "fraud", "-p", p)


def test_registry_reference_replaces_a_versions_profile(project_dir: Path, tmp_path: Path) -> None:
    p = str(project_dir)
    ref = tmp_path / "ref.parquet"
    cards = pq.read_table(project_dir / "data" / "card_profile.parquet")
    pq.write_table(cards, ref)
    out = json.loads(hs("registry", "reference", "fraud/1", str(ref), "-p", p, "--json"))
    assert out["rows"] == cards.num_rows and "utilization" in out["features"]
    assert "reference" in hs("registry", "audit", "-p", p)
