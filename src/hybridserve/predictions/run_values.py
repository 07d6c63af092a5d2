"""How a batch run stores its records: what the run's rows share once, what varies per row.

The records of one run differ only in entity, score, label and ``as_of``. The store already
keeps the entity (the row's member) and ``as_of`` (beside the value, for the precedence
rule), so a row's value is the score and the label, packed: 9 bytes (a tag, the score as a
little-endian double) or 17 (then the label as a little-endian int64), where the whole
record as JSON is about 325. What the rows share (model, version, ``computed_at``, feature
fingerprint; the route and run id) is the run's :class:`RunHeader`, one entry per run
(``pbh:{route}:{run_id}``), written with every chunk's rows so it outlives them all.

Packed, a row costs SQLite's insert about half the CPU it did as JSON, and Redis holds and
copies a fifteenth of the bytes (``docs/benchmarks.md``, stop 18).

A value may also be a whole record (JSON, starting with ``{``): rows carried over from an
earlier run by ``--only-changed`` keep their own model, run and times, and a run staged
record by record (:meth:`~hybridserve.predictions.store.PredictionStore.put_run`) stores
them whole.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from hybridserve.records import PredictionRecord

SCORE = 1
"""Tag of a packed value with a score only (the route has no threshold)."""
SCORE_LABEL = 2
"""Tag of a packed value with a score and an integer label."""

_SCORE = struct.Struct("<d")
_LABEL = struct.Struct("<q")
_ONLY = np.dtype([("tag", "u1"), ("score", "<f8")])
_WITH_LABEL = np.dtype([("tag", "u1"), ("score", "<f8"), ("label", "<i8")])


def header_key(route: str, run_id: str) -> str:
    """The store key of run ``run_id``'s header."""
    return f"pbh:{route}:{run_id}"


@dataclass(frozen=True, slots=True)
class RunHeader:
    """The fields every record of one batch run shares."""

    route: str
    run_id: str
    model: str
    model_version: int
    computed_at: float
    feature_fingerprint: str

    def to_bytes(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> RunHeader:
        """The header in ``data``; :class:`ValueError` or :class:`TypeError` if it is none."""
        return cls(**orjson.loads(data))

    def unpack(self, entity: str, value: bytes, as_of: float) -> PredictionRecord:
        """The record a packed value of this run holds (:class:`ValueError` for one that is
        not: too short, an unknown tag, or times that cannot be rendered)."""
        tag = value[0] if value else 0
        if (tag, len(value)) not in ((SCORE, _ONLY.itemsize), (SCORE_LABEL, _WITH_LABEL.itemsize)):
            raise ValueError(f"not a run value ({len(value)} bytes, tag {tag})")
        return PredictionRecord(
            entity=entity,
            route=self.route,
            score=_SCORE.unpack_from(value, 1)[0],
            model=self.model,
            model_version=self.model_version,
            source="batch",
            as_of=as_of,
            computed_at=self.computed_at,
            label=_LABEL.unpack_from(value, 9)[0] if tag == SCORE_LABEL else None,
            run_id=self.run_id,
            feature_fingerprint=self.feature_fingerprint,
        ).checked()


def record(header: RunHeader | None, entity: str, value: bytes, as_of: float) -> PredictionRecord:
    """The record of a run's row: a whole one as stored, or a packed one with its run's
    ``header`` (:class:`ValueError` without it, as when the header expired or was deleted)."""
    if value[:1] == b"{":
        return PredictionRecord.from_bytes(value)
    if header is None:
        raise ValueError("the run's header is missing")
    return header.unpack(entity, value, as_of)


def pack(scores: np.ndarray[Any, Any], labels: np.ndarray[Any, Any] | None) -> pa.Array:
    """Each row's value, packed by numpy into one buffer: a binary column."""
    if not np.isfinite(scores).all():
        raise ValueError("the model returned a non-finite score")
    n = len(scores)
    rows = np.empty(n, _ONLY if labels is None else _WITH_LABEL)
    rows["tag"] = SCORE if labels is None else SCORE_LABEL
    rows["score"] = scores
    if labels is not None:
        rows["label"] = labels
    packed = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(rows.dtype.itemsize), n, [None, pa.py_buffer(rows.tobytes())]
    )
    return pc.cast(packed, pa.binary())
