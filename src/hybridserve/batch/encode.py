"""Column-wise prediction records for batch chunks: the same schema, without per-row objects.

Building a :class:`~hybridserve.records.PredictionRecord` per row and serialising it costs
about 20 us a row, more than the model call. A chunk's records differ only in entity, score,
label and ``as_of``, so they are encoded here straight from the columns into the JSON that
``PredictionRecord.from_bytes`` reads (and, for the snapshot, into Arrow columns). The field
list is checked against the dataclass at import, and a test checks that both decode to what
``Scorer.records`` builds.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from hybridserve.records import PredictionRecord

FIELDS = (
    "entity",
    "route",
    "score",
    "model",
    "model_version",
    "source",
    "as_of",
    "computed_at",
    "label",
    "probabilities",
    "run_id",
    "event_id",
    "request_id",
    "feature_fingerprint",
)
if tuple(f.name for f in dataclasses.fields(PredictionRecord)) != FIELDS:  # pragma: no cover
    raise ImportError("PredictionRecord's fields changed: update hybridserve.batch.encode")

# Printable ASCII but '"' and backslash: such a string needs no escaping in JSON.
_PLAIN = r"^[ !#-\[\]-~]*$"


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _number(x: float) -> str:
    # repr() is the shortest round-trip form, valid JSON for finite floats.
    if not math.isfinite(x):
        raise ValueError(f"cannot store a non-finite value {x!r}")
    return repr(x)


def entity_json(entities: pa.Array) -> pa.Array:
    """Each entity as a JSON string literal (a column kernel when none needs escaping)."""
    entities = pc.cast(entities, pa.string())
    if pc.all(pc.match_substring_regex(entities, _PLAIN)).as_py() is not False:
        return pc.binary_join_element_wise('"', entities, '"', "")
    return pa.array([_json(e) for e in entities.to_pylist()], pa.string())


def number_text(values: np.ndarray[Any, Any]) -> pa.Array:
    """Each float as its shortest round-trip JSON text (``1.0``, never ``1``: still a float)."""
    if not np.isfinite(values).all():
        raise ValueError("cannot store a non-finite value")
    text = pc.cast(pa.array(values, pa.float64()), pa.string())
    whole = pc.invert(pc.match_substring_regex(text, "[.eE]"))
    return pc.if_else(whole, pc.binary_join_element_wise(text, ".0", ""), text)


@dataclasses.dataclass(frozen=True, slots=True)
class ScoredColumns:
    """A scored chunk as columns, with the values every row of the run shares."""

    entities: pa.Array
    scores: np.ndarray[Any, Any]
    labels: np.ndarray[Any, Any] | None
    as_of: np.ndarray[Any, Any]
    route: str
    model: str
    version: int
    run_id: str
    computed_at: float
    fingerprint: str


def record_bytes(c: ScoredColumns) -> pa.Array:
    """The stored form of each row's record (``source`` batch, no probabilities), built by
    column kernels: a binary column, one JSON record per row."""
    if not np.isfinite(c.scores).all():
        raise ValueError("the model returned a non-finite score")
    mid1 = f',"route":{_json(c.route)},"score":'
    mid2 = f',"model":{_json(c.model)},"model_version":{int(c.version)},"source":"batch","as_of":'
    mid3 = f',"computed_at":{_number(c.computed_at)},"label":'
    tail = (
        f',"probabilities":null,"run_id":{_json(c.run_id)},"event_id":null,"request_id":null,'
        f'"feature_fingerprint":{_json(c.fingerprint)}}}'
    )
    n = len(c.entities)
    labels: pa.Array | str = (
        "null" if c.labels is None else pc.cast(pa.array(c.labels, pa.int64()), pa.string())
    )
    if n == 0:
        return pa.array([], pa.binary())
    text = pc.binary_join_element_wise(
        '{"entity":', entity_json(c.entities), mid1, number_text(c.scores), mid2,
        number_text(c.as_of), mid3, labels, tail, "",
    )  # fmt: skip
    return pc.cast(text, pa.binary())


def snapshot_columns(c: ScoredColumns) -> dict[str, pa.Array]:
    """The same records as Arrow columns (the snapshot's record fields, in order)."""
    n = len(c.entities)

    def const(value: Any, kind: pa.DataType) -> pa.Array:
        return pa.nulls(n, kind) if value is None else pa.repeat(pa.scalar(value, kind), n)

    return {
        "entity": c.entities,
        "route": const(c.route, pa.string()),
        "score": pa.array(c.scores, pa.float64()),
        "label": pa.nulls(n, pa.int64()) if c.labels is None else pa.array(c.labels, pa.int64()),
        "probabilities": const(None, pa.string()),
        "model": const(c.model, pa.string()),
        "model_version": const(c.version, pa.int64()),
        "source": const("batch", pa.string()),
        "as_of": pa.array(c.as_of, pa.float64()),
        "computed_at": const(c.computed_at, pa.float64()),
        "run_id": const(c.run_id, pa.string()),
        "event_id": const(None, pa.string()),
        "request_id": const(None, pa.string()),
        "feature_fingerprint": const(c.fingerprint, pa.string()),
    }
