"""Load the latest row per entity from a view's offline source into the online store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hybridserve.config import Project
from hybridserve.features.offline import latest_per_entity, open_source
from hybridserve.features.online import OnlineFeatureStore
from hybridserve.records import now


@dataclass(slots=True)
class MaterializeResult:
    view: str
    rows_read: int
    entities: int
    written: int
    """Entities whose stored value was replaced (fresher values already stored are kept)."""
    as_of: float
    seconds: float


async def materialize(
    project: Project,
    store: OnlineFeatureStore,
    view_name: str,
    *,
    as_of: float | None = None,
    chunk_rows: int = 5000,
    progress: Callable[[int, int], None] | None = None,
) -> MaterializeResult:
    """Write each entity's newest row at or before ``as_of`` (default now) to the online store.

    ``progress(done, total)`` is called after each chunk. Rows with a null entity key or
    event time are skipped; features that are null are stored as missing.
    """
    started = now()
    as_of = started if as_of is None else as_of
    view = project.view(view_name)
    assert view.source is not None
    key = project.entities[view.entity].key
    columns = [key, view.source.timestamp, *view.features]
    table: pa.Table = open_source(project, view_name).to_table(columns=columns)
    rows_read = table.num_rows
    # A row without an entity key cannot be served; CSV reads a missing key as "".
    keys = pc.cast(table[key], pa.string())
    table = table.filter(pc.and_(pc.is_valid(keys), pc.not_equal(keys, "")))
    latest = latest_per_entity(table, key, view.source.timestamp, as_of)
    latest = latest.filter(np.isfinite(latest["__ts"].to_numpy()))
    total = latest.num_rows
    written = 0
    names = list(view.features)
    for start in range(0, total, chunk_rows):
        chunk = latest.slice(start, chunk_rows)
        entities = [str(e) for e in chunk[key].to_pylist()]
        times = chunk["__ts"].to_pylist()
        cols = {n: chunk[n].to_pylist() for n in names}
        rows = [
            (entities[i], {n: cols[n][i] for n in names}, times[i]) for i in range(len(entities))
        ]
        written += await store.write(view_name, rows)
        if progress is not None:
            progress(min(start + chunk_rows, total), total)
    return MaterializeResult(view_name, rows_read, total, written, as_of, now() - started)
