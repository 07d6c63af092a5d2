from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pytest

from hybridserve.config import Project, project_from_dict
from hybridserve.errors import ConfigError
from hybridserve.runtimes.base import Prediction, Signature, Task
from hybridserve.scoring import Scorer, feature_fingerprint


class LinearRuntime:
    """A tiny real model: score = sigmoid(sum of features); counts its calls."""

    def __init__(self, names: list[str]) -> None:
        self.name, self.version, self.task = "lin", 3, "classification"
        self.signature = Signature.from_list(names)
        self.calls: list[int] = []

    task: Task

    def predict(
        self, matrix: npt.NDArray[np.float64], *, probabilities: bool = False
    ) -> Prediction:
        self.calls.append(len(matrix))
        p = 1 / (1 + np.exp(-matrix.sum(axis=1)))
        probs = np.column_stack([1 - p, p]) if probabilities else None
        return Prediction(p, probs, [0, 1])


def project() -> Project:
    return project_from_dict(
        {
            "entities": {"card": {"key": "card_id"}},
            "feature_views": {
                "v": {
                    "entity": "card",
                    "features": {
                        "a": "float",
                        "b": {"dtype": "float", "on_missing": "impute", "default": 2.0},
                        "n": "int",
                        "s": "str",
                    },
                }
            },
            "routes": {
                "r": {
                    "model": "lin@production",
                    "entity": "card",
                    "features": ["v"],
                    "request_features": {"amount": "float"},
                    "threshold": 0.5,
                }
            },
        }
    )


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_rows_validated_scored_in_one_call_and_errors_isolated() -> None:
    rt = LinearRuntime(["a", "b", "n", "amount"])
    scorer = Scorer(project(), "r", rt)
    rows: list[dict[str, Any]] = [
        {"a": 1.0, "b": 1.0, "n": 1, "amount": 0.0},
        {"a": 1.0, "b": None, "n": 2, "amount": -1.0},  # imputed b=2
        {"a": None, "b": 1.0, "n": 1, "amount": 0.0},  # missing a: rejected
        {"a": "x", "b": 1.0, "n": 1, "amount": 0.0},  # wrong type
        {"a": 1.0, "b": float("nan"), "n": 1.5, "amount": 0.0},  # not an int
        {"a": float("inf"), "b": 1.0, "n": 1, "amount": 0.0},
        {"a": np.float32(0.5), "b": np.float64("nan"), "n": np.int64(0), "amount": True},
    ]
    ents = [f"e{i}" for i in range(len(rows))]
    result = scorer.score_rows(
        ents, rows, as_of=[float(i) for i in range(len(rows))], source="online", request_id="req-1"
    )
    assert rt.calls == [3]
    assert [r.entity for r in result.records] == ["e0", "e1", "e6"]
    assert [r.as_of for r in result.records] == [0.0, 1.0, 6.0]
    assert result.records[0].score == pytest.approx(sig(3.0))
    assert result.records[1].score == pytest.approx(sig(4.0))
    assert result.records[2].score == pytest.approx(sig(0.5 + 2.0 + 0 + 1))
    assert result.records[0].label == 1 and result.records[0].request_id == "req-1"
    assert result.records[0].model == "lin" and result.records[0].model_version == 3
    reasons = {e.entity: e.reason for e in result.errors}
    assert reasons == {
        "e2": "missing feature 'a'",
        "e3": "feature 'a': expected a number, got 'x'",
        "e4": "feature 'n': expected int, got 1.5",
        "e5": "feature 'a': expected a finite number, got inf",
    }


def test_records_sharing_rows_are_scored_once_per_row_and_match_one_row_each() -> None:
    """A stream's events of one entity share its stored row: each distinct row is validated
    and scored once, and every record (with its own as_of and event id) gets its row's score,
    as it would with a row of its own; a rejected row rejects each of its records."""
    rt = LinearRuntime(["a", "b", "n"])
    scorer = Scorer(project(), "r", rt)
    rows: list[dict[str, Any]] = [{"a": 1.0, "b": 0.5, "n": 1}, {"a": None, "b": 1.0, "n": 1}]
    rows.append({"a": -2.0, "b": None, "n": 0})
    row_of = [0, 2, 0, 1, 2, 1, 0]
    ents = ["c0", "c2", "c0", "c1", "c2", "c1", "c0"]
    ids = [f"ev{i}" for i in range(len(row_of))]
    shared = scorer.score_rows(
        ents,
        rows,
        as_of=[float(i) for i in range(7)],
        source="stream",
        event_ids=ids,
        row_of=row_of,
        probabilities=True,
    )
    assert rt.calls == [2]  # the two valid distinct rows, once each
    one_each = scorer.score_rows(
        ents,
        [rows[r] for r in row_of],
        as_of=[float(i) for i in range(7)],
        source="stream",
        event_ids=ids,
        probabilities=True,
    )
    assert [r.to_dict() | {"computed_at": 0} for r in shared.records] == [
        r.to_dict() | {"computed_at": 0} for r in one_each.records
    ]
    assert [(r.entity, r.event_id, r.as_of) for r in shared.records] == [
        ("c0", "ev0", 0.0),
        ("c2", "ev1", 1.0),
        ("c0", "ev2", 2.0),
        ("c2", "ev4", 4.0),
        ("c0", "ev6", 6.0),
    ]
    assert [(e.index, e.entity, e.reason) for e in shared.errors] == [
        (3, "c1", "missing feature 'a'"),
        (5, "c1", "missing feature 'a'"),
    ]


def test_columns_path_matches_rows_path() -> None:
    rt = LinearRuntime(["a", "b", "n"])
    scorer = Scorer(project(), "r", rt)
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = rng.normal(size=200)
    b[::7] = np.nan
    a[5] = np.nan
    n = rng.integers(0, 5, size=200).astype(float)
    n[9] = 0.5
    ents = [str(i) for i in range(200)]
    cols = {"a": pa.array(a), "b": pa.array(b), "n": pa.array(n)}
    by_cols = scorer.score_columns(ents, cols, as_of=1.0, source="batch", run_id="run-1")
    rows = [{"a": a[i], "b": b[i], "n": n[i]} for i in range(200)]
    by_rows = scorer.score_rows(
        ents,
        [{k: float(v) for k, v in r.items()} for r in rows],
        as_of=1.0,
        source="batch",
        run_id="run-1",
    )
    assert [r.entity for r in by_cols.records] == [r.entity for r in by_rows.records]
    assert np.allclose([r.score for r in by_cols.records], [r.score for r in by_rows.records])
    assert {(e.entity, e.reason) for e in by_cols.errors} == {
        (e.entity, e.reason) for e in by_rows.errors
    }
    assert len(by_cols.errors) == 2 and by_cols.records[0].run_id == "run-1"


def test_columns_reject_strings_per_row() -> None:
    scorer = Scorer(project(), "r", LinearRuntime(["a", "b", "n"]))
    cols = {"a": ["1.0", 2.0, None], "b": [1.0, 1.0, 1.0], "n": [1, 1, 1]}
    result = scorer.score_columns(["x", "y", "z"], cols, as_of=0.0, source="batch")
    assert [r.entity for r in result.records] == ["y"]
    assert {e.entity: e.reason for e in result.errors} == {
        "x": "feature 'a': expected a number, got '1.0'",
        "z": "missing feature 'a'",
    }


def test_probabilities_when_asked() -> None:
    scorer = Scorer(project(), "r", LinearRuntime(["a"]))
    result = scorer.score_rows(["e"], [{"a": 0.0}], as_of=0.0, source="online", probabilities=True)
    assert result.records[0].probabilities == {"0": 0.5, "1": 0.5}


def test_model_needing_undeclared_feature_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="does not provide: zzz"):
        Scorer(project(), "r", LinearRuntime(["a", "zzz"]))
    with pytest.raises(ConfigError, match="declares it as str"):
        Scorer(project(), "r", LinearRuntime(["s"]))


def test_fingerprint_tracks_feature_definitions() -> None:
    p = project()
    base = feature_fingerprint(p, "r", ["a", "b"])
    assert base == feature_fingerprint(project(), "r", ["a", "b"])
    assert base != feature_fingerprint(p, "r", ["b", "a"])
