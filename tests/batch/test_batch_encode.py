"""Column-wise batch records read back as exactly what ``Scorer.records`` builds: the packed
values with their run's header, and the snapshot's columns."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest
from batch_helpers import cards

from hybridserve.batch.chunk import SNAPSHOT_SCHEMA, snapshot_records
from hybridserve.batch.encode import ScoredColumns, snapshot_columns
from hybridserve.config import Project
from hybridserve.predictions import run_values
from hybridserve.predictions.run_values import RunHeader
from hybridserve.registry import Registry
from hybridserve.scoring import Scorer


def test_encoded_records_match_the_scorer(make_project: Callable[..., Project]) -> None:
    project = make_project()
    with Registry.from_project(project) as registry:
        scorer = Scorer(project, "fraud", registry.load("fraud/1"))
    table = cards(project).slice(0, 50)
    ids = ['we"ird\\card', "cärd_é", "tab\tcard", *table["card_id"].to_pylist()[3:]]
    prepared = scorer.prepare_columns(ids, {c: table[c] for c in scorer.names})
    prediction = scorer.runtime.predict(prepared.matrix)
    as_of = np.linspace(1.7e9, 1.8e9, 50)
    as_of[:2] = [1.7e9, 1e-05]  # a whole number of seconds is still written as a float
    for threshold in (0.5, None):
        scorer.threshold = threshold
        expected = scorer.records(
            ids, prediction, as_of=as_of.tolist(), source="batch", run_id="r", computed_at=1.9e9
        )
        scores = prediction.scores
        labels = None if threshold is None else (scores >= threshold).astype(int)
        scored = ScoredColumns(
            pa.array(ids, pa.string()),
            scores,
            labels,
            as_of,
            RunHeader("fraud", "r", "fraud", 1, 1.9e9, scorer.fingerprint),
        )
        header = RunHeader.from_bytes(scored.header.to_bytes())
        values = scored.values().to_pylist()
        assert {len(v) for v in values} == {9 if threshold is None else 17}
        rows = zip(ids, values, as_of.tolist(), strict=True)
        got = [run_values.record(header, e, v, t) for e, v, t in rows]
        assert got == expected
        assert all(type(r.score) is float and type(r.as_of) is float for r in got)
        columns = snapshot_columns(scored)
        columns["feature_hash"] = pa.array(np.zeros(50, dtype=np.int64))
        assert snapshot_records(pa.table(columns, schema=SNAPSHOT_SCHEMA)) == expected


def test_a_value_that_is_not_a_record_is_refused() -> None:
    header = RunHeader("fraud", "r", "fraud", 1, 1.9e9, "fp")
    (good,) = run_values.pack(np.array([0.25]), None).to_pylist()
    assert run_values.record(header, "a", good, 1.7e9).score == 0.25
    whole = run_values.record(header, "a", good, 1.7e9).to_bytes()
    assert run_values.record(None, "a", whole, 0.0).as_of == 1.7e9  # a whole record: no header
    for bad in (b"", good[:-1], b"\x07" + good[1:], good + b"\x00"):
        with pytest.raises(ValueError, match="not a run value"):
            run_values.record(header, "a", bad, 1.7e9)
    with pytest.raises(ValueError, match="header is missing"):
        run_values.record(None, "a", good, 1.7e9)
    with pytest.raises(ValueError, match="as_of"):
        run_values.record(header, "a", good, 1e300)
    with pytest.raises(ValueError, match="non-finite"):
        run_values.pack(np.array([np.nan]), None)
