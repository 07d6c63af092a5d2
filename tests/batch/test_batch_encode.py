"""Column-wise batch records decode to exactly what ``Scorer.records`` builds."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from conftest import cards
from hybridserve.batch.chunk import SNAPSHOT_SCHEMA, snapshot_records
from hybridserve.batch.encode import ScoredColumns, record_bytes, snapshot_columns
from hybridserve.config import Project
from hybridserve.records import PredictionRecord
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
            route="fraud",
            model="fraud",
            version=1,
            run_id="r",
            computed_at=1.9e9,
            fingerprint=scorer.fingerprint,
        )
        got = [PredictionRecord.from_bytes(b) for b in record_bytes(scored).to_pylist()]
        assert got == expected
        assert all(type(r.score) is float and type(r.as_of) is float for r in got)
        columns = snapshot_columns(scored)
        columns["feature_hash"] = pa.array(np.zeros(50, dtype=np.int64))
        assert snapshot_records(pa.table(columns, schema=SNAPSHOT_SCHEMA)) == expected
