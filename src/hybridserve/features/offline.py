"""Offline sources: Parquet or CSV files with an event-time column, read with pyarrow."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hybridserve.config import FeatureViewConfig, Project
from hybridserve.errors import ConfigError

if TYPE_CHECKING:  # imported where used (it brings pandas along): a batch worker needs neither
    import pyarrow.dataset as ds


def source_path(project: Project, view_name: str) -> Path:
    view = project.view(view_name)
    if view.source is None:
        raise ConfigError(f"feature_views.{view_name}: has no offline source")
    return project.path(view.source.path)


def open_source(project: Project, view_name: str) -> ds.Dataset:
    """The view's offline source as a pyarrow dataset (lazy: nothing is read yet)."""
    view = project.view(view_name)
    path = source_path(project, view_name)
    if not path.exists():
        raise ConfigError(f"feature_views.{view_name}.source.path: file not found: {path}")
    assert view.source is not None
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(path), format=view.source.resolved_format)
    check_columns(view_name, view, dataset.schema.names, project.entities[view.entity].key)
    return dataset


def check_columns(view_name: str, view: FeatureViewConfig, names: list[str], key: str) -> None:
    assert view.source is not None
    needed = [key, view.source.timestamp, *view.features]
    missing = [c for c in needed if c not in names]
    if missing:
        raise ConfigError(
            f"feature_views.{view_name}.source: {view.source.path} has no column(s) "
            f"{', '.join(missing)}"
        )


def epoch_seconds(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Event times as float epoch seconds, from timestamps, dates, numbers or ISO strings."""
    t = column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return np.array([_parse_iso(v) for v in column.to_pylist()], dtype=np.float64)
    if pa.types.is_date(t):
        column = pc.cast(column, pa.timestamp("us"))
        t = column.type
    if pa.types.is_timestamp(t):
        micros = pc.cast(pc.cast(column, pa.timestamp("us", t.tz)), pa.int64())
        return np.asarray(micros.to_numpy(zero_copy_only=False), dtype=np.float64) / 1e6
    floats = pc.cast(column, pa.float64())
    return np.asarray(floats.to_numpy(zero_copy_only=False), dtype=np.float64)


def _parse_iso(value: str | None) -> float:
    if value is None:
        return float("nan")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return float("nan")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def latest_per_entity(table: pa.Table, key: str, ts_column: str, as_of: float) -> pa.Table:
    """The newest row per entity with event time at or before ``as_of``."""
    ts = epoch_seconds(table[ts_column])
    table = table.append_column("__ts", pa.array(ts))
    table = table.filter(pc.less_equal(table["__ts"], as_of))
    if table.num_rows == 0:
        return table
    table = table.sort_by([(key, "ascending"), ("__ts", "descending")])
    keys = table[key].combine_chunks()
    first = np.ones(table.num_rows, dtype=bool)
    if table.num_rows > 1:
        first[1:] = np.asarray(
            pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1)).to_numpy(zero_copy_only=False)
        )
    return table.filter(pa.array(first))
