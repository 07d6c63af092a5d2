"""Row checks a batch input needs before the Scorer sees it: entity keys and text cells.

- **Entity keys.** A row whose key is null, NaN, infinite or empty cannot be stored or
  served: it is rejected (``entity key 'card_id' is missing``, ``... expected a finite
  number, got inf``). A key that occurs more than once in the input has one outcome: the
  **first** row with it (in input order) is the one scored; every later row is rejected as
  ``duplicate entity key (first at row N)``. The first rows are found by one pass over the
  key column before any chunk is scored (:func:`duplicate_keys`), so the rule holds across
  chunks, workers and a resumed run alike.
- **Text cells.** A CSV input's feature columns are read as text (so one bad cell cannot turn
  a whole column into strings) and parsed here as the feature's declared dtype: a cell that
  does not parse rejects its row only, naming the column and the value; an empty cell is a
  missing value, which the Scorer rejects or imputes as usual.

Reasons go to the run's ``rejected-NNNNNN.parquet`` with the row, like the Scorer's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hybridserve.config import DType
from hybridserve.scoring import not_a_number

Reasons = dict[int, str]
"""Row position in the checked table -> why the row is rejected."""

_TRUE, _FALSE = {"true", "1"}, {"false", "0"}


def entity_keys(column: pa.Array | pa.ChunkedArray, key: str) -> tuple[pa.Array, Reasons]:
    """The keys as strings (null where unusable) and why each unusable one is rejected."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    reasons: Reasons = {}
    invalid = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_floating(col.type):
        values = np.asarray(pc.fill_null(col, 0.0).to_numpy(zero_copy_only=False))
        nan, inf = np.isnan(values), np.isinf(values)
        for i in np.flatnonzero(inf):
            got = float(values[i])
            reasons[int(i)] = f"entity key {key!r}: expected a finite number, got {got!r}"
        invalid |= nan | inf
    names = pc.cast(col, pa.string())
    empty = np.asarray(
        pc.fill_null(pc.equal(names, ""), False).to_numpy(zero_copy_only=False), dtype=bool
    )
    for i in np.flatnonzero(empty):
        reasons[int(i)] = f"entity key {key!r} is empty"
    invalid |= empty
    for i in np.flatnonzero(invalid):
        reasons.setdefault(int(i), f"entity key {key!r} is missing")
    if invalid.any():
        names = pc.if_else(pa.array(invalid), pa.scalar(None, pa.string()), names)
    return names, reasons


def key_hash(names: pa.Array) -> np.ndarray[Any, Any]:
    """A 64-bit FNV-1a hash of each (non-null) string, byte position by byte position."""
    names = pc.cast(names, pa.string())
    n = len(names)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    _, offsets_buf, data_buf = names.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=n + 1, offset=names.offset * 4)
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(1, np.uint8)
    )
    starts, lengths = offsets[:-1].astype(np.int64), np.diff(offsets)
    h = np.full(n, 0xCBF29CE484222325, dtype=np.uint64)
    rows: np.ndarray[Any, Any] | slice = slice(None)
    with np.errstate(over="ignore"):
        for j in range(int(lengths.max())):
            if j >= int(lengths.min()):
                rows = np.flatnonzero(lengths > j)
            h[rows] = (h[rows] ^ data[starts[rows] + j]) * np.uint64(0x100000001B3)
        return h ^ (lengths.astype(np.uint64) << np.uint64(56))


def duplicate_keys(
    chunks: Iterable[tuple[int, pa.Table]], key: str, chunk_rows: int
) -> dict[str, int]:
    """Input row of the first occurrence of every key that occurs more than once.

    One pass keeps only a 64-bit hash per key (8 bytes a row, not the keys): distinct hashes
    mean distinct keys, the usual case, and nothing more is read. Keys whose hash occurs more
    than once are then compared exactly, in a second pass over their rows only.
    """
    read = [(index, entity_keys(table[key], key)[0]) for index, table in chunks]
    hashes = [key_hash(names.filter(pc.is_valid(names))) for _, names in read]
    if not hashes:
        return {}
    every = np.sort(np.concatenate(hashes))
    repeated = np.unique(every[1:][every[1:] == every[:-1]])
    if not len(repeated):
        return {}
    parts: list[pa.Table] = []
    for index, names in read:
        valid = names.filter(pc.is_valid(names))
        rows = np.flatnonzero(np.asarray(pc.is_valid(names)))
        maybe = np.isin(key_hash(valid), repeated)
        parts.append(
            pa.table(
                {
                    "key": valid.filter(pa.array(maybe)),
                    "row": pa.array(rows[maybe] + index * chunk_rows, pa.int64()),
                }
            )
        )
    counts = pa.concat_tables(parts).group_by("key").aggregate([("row", "min"), ("row", "count")])
    dupes = counts.filter(pc.greater(counts["row_count"], 1))
    return dict(zip(dupes["key"].to_pylist(), dupes["row_min"].to_pylist(), strict=True))


def later_duplicates(
    names: pa.Array, rows: np.ndarray[Any, Any], first: Mapping[str, int]
) -> Reasons:
    """Positions whose key occurred at an earlier input row (``rows``: each position's row)."""
    if not first:
        return {}
    reasons: Reasons = {}
    hit = pc.fill_null(pc.is_in(names, value_set=pa.array(list(first), pa.string())), False)
    for i in np.flatnonzero(np.asarray(hit.to_numpy(zero_copy_only=False), dtype=bool)):
        at = first[names[int(i)].as_py()]
        if int(rows[i]) != at:
            reasons[int(i)] = f"duplicate entity key (first at row {at})"
    return reasons


def parse_text(table: pa.Table, dtypes: Mapping[str, DType]) -> tuple[pa.Table, Reasons]:
    """``table`` with text columns of numeric or bool features parsed as their dtype.

    A cell that does not parse becomes null and its row gets a reason (the first bad cell).
    Columns that are not text, and ``str`` features, are left as they are.
    """
    reasons: Reasons = {}
    for name, dtype in dtypes.items():
        if name not in table.column_names or dtype == "str":
            continue
        col = table[name]
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            continue
        parsed, bad = _parse(col, dtype)
        for i, value in bad:
            reasons.setdefault(i, not_a_number(name, value))
        table = table.set_column(table.schema.get_field_index(name), name, parsed)
    return table, reasons


def _parse(col: pa.ChunkedArray, dtype: DType) -> tuple[pa.Array, list[tuple[int, str]]]:
    target = pa.bool_() if dtype == "bool" else pa.float64()
    try:
        return pc.cast(col, target).combine_chunks(), []
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass  # some cells do not parse: find them one by one
    out: list[Any] = []
    bad: list[tuple[int, str]] = []
    for i, text in enumerate(col.to_pylist()):
        value = None if text is None or not text.strip() else _cell(text, dtype)
        if value is None and text is not None and text.strip():
            bad.append((i, text))
        out.append(value)
    return pa.array(out, target), bad


def _cell(text: str, dtype: DType) -> float | bool | None:
    if dtype == "bool":
        word = text.strip().lower()
        return True if word in _TRUE else False if word in _FALSE else None
    try:
        return float(text)
    except ValueError:
        return None
