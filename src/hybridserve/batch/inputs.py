"""A batch job's input, read in fixed-size chunks: chunk ``i`` is always the same rows.

Two kinds of input (``BatchInputConfig``):

- ``path``: a Parquet file or directory, or a CSV file, streamed with pyarrow's dataset
  scanner and re-cut into chunks of exactly ``chunk_rows`` rows, so memory stays bounded
  whatever the input size and a resumed run can skip chunks by index;
- ``view``: a feature view's offline source, reduced to the latest row per entity as of the
  run's snapshot time. This one is held in memory: it is bounded by the view.

The input fingerprint (path, size and mtime of every file) is kept in the run's manifest; a
resumed run refuses an input that changed since the run started.
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from hybridserve.batch.checks import entity_keys, parse_text
from hybridserve.config import BatchJobConfig, Project
from hybridserve.errors import ConfigError
from hybridserve.features.offline import latest_per_entity, open_source, source_path

if TYPE_CHECKING:  # imported where used: a pool worker reading Parquet chunks never needs it
    import pyarrow.dataset as ds

Format = Literal["parquet", "csv"]
_SCAN_ROWS = 65_536


@dataclass
class InputPlan:
    """Where the rows come from, which columns are read, and how they are cut into chunks."""

    kind: Literal["path", "view"]
    key: str
    timestamp: str | None
    """Column with each row's feature time; ``None``: every row has the snapshot time."""
    columns: list[str]
    chunk_rows: int
    total_rows: int
    fingerprint: dict[str, Any]
    files: list[str]
    format: Format
    table: pa.Table | None = None
    """The view's latest rows (``view`` inputs only)."""
    largest_row_group: int | None = None
    """Rows in the largest Parquet row group (``None`` for CSV)."""
    text_columns: tuple[str, ...] = ()
    """CSV columns read as text: the key (kept as written) and the features, which
    :func:`~hybridserve.batch.checks.parse_text` parses cell by cell."""

    def dataset(self) -> ds.Dataset:
        import pyarrow.dataset as ds

        return ds.dataset(self.files, format=_format(self.format, self.text_columns))

    @property
    def random_access(self) -> bool:
        """Can a worker read chunk ``i`` itself at little cost (no scan from the start)?"""
        if self.table is not None:
            return True
        big = self.largest_row_group
        return big is not None and big <= 4 * self.chunk_rows

    @property
    def total_chunks(self) -> int:
        return -(-self.total_rows // self.chunk_rows)

    def chunks(
        self, skip: Container[int] = (), columns: list[str] | None = None
    ) -> Iterator[tuple[int, pa.Table]]:
        """``(index, rows)`` for every chunk not in ``skip``, streaming, in input order."""
        cols = columns or self.columns
        if self.table is not None:
            for i in range(self.total_chunks):
                if i not in skip:
                    yield i, self.table.slice(i * self.chunk_rows, self.chunk_rows).select(cols)
            return
        dataset = self.dataset()
        pending: list[pa.RecordBatch] = []
        have, index = 0, 0
        # Little read-ahead: the pool already overlaps reading with scoring, and pyarrow's
        # default (16 batches, 4 files) would hold hundreds of MB for wide inputs.
        scan = dataset.to_batches(
            columns=cols, batch_size=_SCAN_ROWS, batch_readahead=2, fragment_readahead=1
        )
        for batch in scan:
            pending.append(batch)
            have += batch.num_rows
            while have >= self.chunk_rows:
                table = pa.Table.from_batches(pending, schema=batch.schema)
                if index not in skip:
                    yield index, table.slice(0, self.chunk_rows).combine_chunks()
                rest = table.slice(self.chunk_rows)
                pending, have, index = rest.to_batches(), rest.num_rows, index + 1
        if have and index not in skip:
            yield index, pa.Table.from_batches(pending).combine_chunks()

    def read_chunk(self, index: int) -> pa.Table:
        """Chunk ``index`` alone (random access, for executors whose workers read their input).

        Parquet files are located by row-group metadata, so only the row groups that hold the
        chunk are read; a CSV input is scanned up to the chunk.
        """
        start, stop = index * self.chunk_rows, min((index + 1) * self.chunk_rows, self.total_rows)
        if self.table is not None:
            return self.table.slice(start, stop - start).select(self.columns)
        if self.format == "csv":
            for i, table in self.chunks(columns=self.columns):
                if i == index:
                    return table
            raise IndexError(index)
        parts: list[pa.Table] = []
        offset = 0
        for path in self.files:
            file = pq.ParquetFile(path)
            for rg in range(file.metadata.num_row_groups):
                n = file.metadata.row_group(rg).num_rows
                lo, hi = max(start, offset), min(stop, offset + n)
                if lo < hi:
                    rows = file.read_row_groups([rg], columns=self.columns)
                    parts.append(rows.slice(lo - offset, hi - lo))
                offset += n
                if offset >= stop:
                    return pa.concat_tables(parts).combine_chunks()
        return pa.concat_tables(parts).combine_chunks()


def _format(fmt: Format, text_columns: tuple[str, ...]) -> ds.FileFormat:
    import pyarrow.dataset as ds

    if fmt == "csv":
        # Declared columns are read as text and parsed per cell: inferred types would turn a
        # whole column into strings for one bad cell (and every row would be rejected).
        return ds.CsvFileFormat(
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in text_columns}, strings_can_be_null=True
            )
        )
    # pre_buffer caches whole column chunks ahead of the batches: memory grows with the
    # file. Without it, memory stays bounded by a row group.
    return ds.ParquetFileFormat(
        default_fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False)
    )


def _files(path: Path, fmt: Format) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.rglob(f"*.{fmt}") if p.is_file())
        if not found:
            raise ConfigError(f"{path}: no .{fmt} files in this directory")
        return found
    if not path.exists():
        raise ConfigError(f"{path}: input not found")
    return [path]


def _fingerprint(kind: str, name: str, files: list[Path]) -> dict[str, Any]:
    stats = [(str(f), f.stat()) for f in files]
    return {
        "kind": kind,
        kind: name,
        "files": [{"path": p, "size": s.st_size, "mtime_ns": s.st_mtime_ns} for p, s in stats],
    }


def open_input(
    project: Project,
    job_name: str,
    job: BatchJobConfig,
    *,
    needed: list[str],
    features: Sequence[str] = (),
    snapshot_at: float,
    chunk_rows: int,
) -> InputPlan:
    """Plan a job's input: check its columns, count its rows, fingerprint its files.

    ``needed``: every column read; ``features``: those that are model inputs (typed by their
    declared dtype, so a CSV input reads them as text to parse).
    """
    inp = job.input
    key = project.entities[project.route(job.route).entity].key
    if inp.view is not None:
        view = project.view(inp.view)
        dataset = open_source(project, inp.view)
        assert view.source is not None  # open_source checked it
        ts = view.source.timestamp
        _check(f"batch_jobs.{job_name}.input.view", dataset.schema.names, [key, *needed])
        table = dataset.to_table(columns=_unique([key, ts, *needed]))
        latest = latest_per_entity(table, key, ts, snapshot_at)
        path = source_path(project, inp.view)
        files = _files(path, view.source.resolved_format)
        return InputPlan(
            kind="view",
            key=key,
            timestamp="__ts",
            columns=_unique([key, ts, "__ts", *needed]),
            chunk_rows=chunk_rows,
            total_rows=latest.num_rows,
            fingerprint=_fingerprint("view", inp.view, files),
            files=[str(f) for f in files],
            format=view.source.resolved_format,
            table=latest.combine_chunks(),
        )
    assert inp.path is not None
    path = project.path(inp.path)
    fmt: Format = inp.format or ("csv" if path.suffix.lower() == ".csv" else "parquet")
    files = _files(path, fmt)
    import pyarrow.dataset as ds

    names = ds.dataset([str(f) for f in files], format=fmt).schema.names
    text = tuple(c for c in _unique([key, *features]) if c in names) if fmt == "csv" else ()
    dataset = ds.dataset([str(f) for f in files], format=_format(fmt, text))
    stamp = inp.timestamp or ("event_time" if "event_time" in names else None)
    stamps = [] if stamp is None else [stamp]
    _check(f"batch_jobs.{job_name}.input.path", names, [key, *stamps, *needed])
    largest = None
    if fmt == "parquet":
        metas = [pq.ParquetFile(f).metadata for f in files]
        largest = max(
            (m.row_group(i).num_rows for m in metas for i in range(m.num_row_groups)), default=0
        )
    return InputPlan(
        kind="path",
        key=key,
        timestamp=stamp,
        columns=_unique([key, *stamps, *needed]),
        chunk_rows=chunk_rows,
        total_rows=dataset.count_rows(),
        fingerprint=_fingerprint("path", str(path), files),
        files=[str(f) for f in files],
        format=fmt,
        largest_row_group=largest,
        text_columns=text,
    )


def top_k_entities(plan: InputPlan, column: str, k: int) -> pa.Array:
    """The ``k`` entities with the highest ``column`` (ties: smaller key first), streaming.

    Rows with an unusable key or activity value do not count; a key is counted once.
    """
    best: pa.Table | None = None
    order = [(column, "descending"), ("key", "ascending")]
    for _, chunk in plan.chunks(columns=_unique([plan.key, column])):
        keys, _ = entity_keys(chunk[plan.key], plan.key)
        activity, _ = parse_text(chunk.select([column]), {column: "float"})
        part = pa.table({"key": keys, column: activity[column]})
        both = part if best is None else pa.concat_tables([best, part])
        both = both.filter(pc.and_(pc.is_valid(both["key"]), pc.is_valid(both[column])))
        both = both.take(pc.sort_indices(both, sort_keys=order))
        best = _first_per_key(both, k)
    if best is None:
        return pa.array([], pa.string())
    return best["key"].combine_chunks()


def _first_per_key(table: pa.Table, k: int) -> pa.Table:
    """The first ``k`` rows of ``table`` whose key has not shown up in an earlier row."""
    top = table.slice(0, k)
    if pc.count_distinct(top["key"]).as_py() == top.num_rows:
        return top
    seen: set[str] = set()
    rows: list[int] = []
    for i, key in enumerate(table["key"].to_pylist()):
        if key not in seen:
            seen.add(key)
            rows.append(i)
            if len(rows) == k:
                break
    return table.take(pa.array(rows, pa.int64()))


def _check(where: str, names: list[str], needed: list[str]) -> None:
    missing = [c for c in _unique(needed) if c not in names]
    if missing:
        raise ConfigError(f"{where}: the input has no column(s) {', '.join(missing)}")


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))
