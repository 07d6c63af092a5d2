"""A chunk's drift tallies: its rows counted in the reference profile's bins.

A batch run's drift report (:func:`hybridserve.batch.quality.input_drift`) adds up, over every
chunk, how many of the chunk's input values (and of its scores) fall in each bin of the model
version's reference profile, plus a sample of present values for the KS test. The values are
the chunk's rows as parsed: a row whose key or text cells were rejected is not counted. Each chunk's
worker counts its own rows while they are in memory (:func:`tally_chunk`) and writes the counts
beside its snapshot (``drift-NNNNNN.json``), so the report reads a few kilobytes per chunk
instead of the whole input and every snapshot again. A chunk whose worker could not count it
(it logs why) is listed in the report's ``uncounted_chunks``.

The sample: the first ``per_chunk`` present values of each chunk, in input order, so it spans
the whole input (``per_chunk`` is the run's sample size over its number of chunks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from hybridserve.batch.manifest import write_atomic
from hybridserve.quality.profile import FeatureProfile, Profile, bin_counts, numeric

KS_SAMPLE = 5000
"""Present values per feature (and of the score) the KS test gets, over the whole run."""


def sample_per_chunk(total_chunks: int) -> int:
    return math.ceil(KS_SAMPLE / max(total_chunks, 1))


@dataclass(slots=True)
class Tally:
    """Counts per reference bin of one feature (or the score), and a sample for KS."""

    counts: list[float]
    missing: int = 0
    total: int = 0
    sample: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, profile: FeatureProfile, values: Any, per_chunk: int) -> Tally:
        counts, missing, total = bin_counts(profile, values)
        sample: list[float] = []
        if profile.kind == "numeric" and per_chunk > 0:
            arr = numeric(values)
            sample = arr[~np.isnan(arr)][:per_chunk].tolist()
        return cls(counts.tolist(), missing, total, sample)

    def add(self, other: Tally) -> None:
        self.counts = (np.asarray(self.counts) + np.asarray(other.counts)).tolist()
        self.missing += other.missing
        self.total += other.total
        self.sample += other.sample


@dataclass(slots=True)
class ChunkDrift:
    """One chunk's tallies: per profiled model input, and of the scores."""

    features: dict[str, Tally]
    score: Tally | None

    def add(self, other: ChunkDrift) -> None:
        """Add ``other``'s counts to these (and its sample after this one's)."""
        for name, tally in other.features.items():
            if name in self.features:
                self.features[name].add(tally)
            else:
                self.features[name] = tally
        if other.score is not None:
            if self.score is None:
                self.score = other.score
            else:
                self.score.add(other.score)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "features": {n: _tally_dict(t) for n, t in self.features.items()},
                "score": None if self.score is None else _tally_dict(self.score),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ChunkDrift:
        d = orjson.loads(data)
        return cls(
            {n: Tally(**t) for n, t in d["features"].items()},
            None if d["score"] is None else Tally(**d["score"]),
        )


def tally_chunk(
    profile: Profile,
    names: list[str],
    table: pa.Table,
    scores: Any | None,
    per_chunk: int,
) -> ChunkDrift:
    """Count ``table``'s columns ``names`` (those the profile has) and ``scores`` (None: not
    counted) in ``profile``'s bins."""
    features = {
        n: Tally.of(profile.features[n], table[n].to_numpy(zero_copy_only=False), per_chunk)
        for n in names
        if n in profile.features
    }
    score = None
    if profile.score is not None and scores is not None:
        score = Tally.of(profile.score, np.asarray(scores, dtype=np.float64), per_chunk)
    return ChunkDrift(features, score)


def drift_file(run_dir: str | Path, index: int) -> Path:
    return Path(run_dir) / f"drift-{index:06d}.json"


def write_chunk_drift(run_dir: str | Path, index: int, drift: ChunkDrift) -> None:
    write_atomic(drift_file(run_dir, index), drift.to_bytes())


def read_chunk_drift(run_dir: str | Path, index: int) -> ChunkDrift | None:
    """Chunk ``index``'s tallies, or None when its worker did not write them."""
    try:
        return ChunkDrift.from_bytes(drift_file(run_dir, index).read_bytes())
    except FileNotFoundError:
        return None


def _tally_dict(t: Tally) -> dict[str, Any]:
    return {"counts": t.counts, "missing": t.missing, "total": t.total, "sample": t.sample}
