"""A run's records on Redis: bucketed hashes, written as raw commands built from columns.

A run's records live in :data:`BUCKETS` hashes ``{run}:{bucket}`` (three hex digits), each
mapping a member (the entity) to its packed record: ``as_of`` as 8 little-endian bytes, then
the value. The bucket of a member is ``crc32(member) % BUCKETS`` (stable across processes and
hosts, unlike ``hash()``): :func:`bucket_of` for one member on the read path, and
:func:`bucket_column`, the same CRC computed with numpy over an Arrow column, on the write
path. A new hash per record cost Redis 4 us (``HSET``) to 10 us (the compare-and-set script)
of CPU; a field in an existing hash costs a fraction of that, and one expiry per bucket
replaces one per key.

:func:`hset_batches` encodes a batch of rows as RESP (``HSET bucket MARKER v m1 v1 m2 v2 ...``
per bucket, then ``PEXPIREAT bucket ms``; see :data:`MARKER`) with Arrow kernels: no Python
object per row, and redis-py does not encode or frame each argument again.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BUCKETS = 4096
"""Hashes per run (a power of two). Changing it would hide every run written before."""

_AS_OF = struct.Struct("<d")

MARKER = b"\xff"
"""A field in every bucket that no member has (no UTF-8 text holds the byte 0xff), whose
value is longer than Redis's ``hash-max-listpack-value`` (64 by default): with it in a
bucket's first ``HSET``, Redis makes the bucket a hash table at once. A bucket of a large run
outgrows the listpack encoding (128 fields by default) anyway, and until then each field
written into a listpack cost Redis about 2.8 us of CPU against 1.0 in a hash table
(``docs/benchmarks.md``). Scans skip it."""


def _crc_table() -> np.ndarray[Any, Any]:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(0xEDB88320), t >> 1).astype(np.uint32)
    return t


_TABLE = _crc_table()


def bucket_key(run: str, bucket: int) -> str:
    return f"{run}:{bucket:03x}"


def bucket_of(member: str) -> int:
    return zlib.crc32(member.encode()) & (BUCKETS - 1)


def bucket_column(members: pa.Array) -> np.ndarray[Any, Any]:
    """``bucket_of`` of every member of a string column, byte position by byte position."""
    n = len(members)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    members = pc.cast(members, pa.string())
    _, offsets_buf, data_buf = members.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=n + 1, offset=members.offset * 4)
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(1, np.uint8)
    )
    starts = offsets[:-1].astype(np.int64)
    lengths = np.diff(offsets)
    crc = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
    longest = int(lengths.max())
    rows: np.ndarray[Any, Any] | slice = slice(None)
    for j in range(longest):
        if j >= int(lengths.min()):
            rows = np.flatnonzero(lengths > j)
        c = crc[rows]
        crc[rows] = _TABLE[(c ^ data[starts[rows] + j]) & 0xFF] ^ (c >> 8)
    return ((crc ^ np.uint32(0xFFFFFFFF)) & (BUCKETS - 1)).astype(np.int64)


def pack_values(values: pa.Array, as_of: pa.Array) -> pa.Array:
    """Each row's stored field value: ``as_of`` (8 bytes, little-endian) then the value."""
    stamps = np.ascontiguousarray(as_of.to_numpy(zero_copy_only=False), dtype="<f8")
    fixed = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(8), len(stamps), [None, pa.py_buffer(stamps.tobytes())]
    )
    return pc.binary_join_element_wise(fixed.cast(pa.binary()), values, b"")


def unpack_value(packed: bytes) -> tuple[bytes, float]:
    """``(value, as_of)`` of a stored field value."""
    return packed[_AS_OF.size :], _AS_OF.unpack_from(packed)[0]


def _bulk(text: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(text), text)


_MARKER_PAIR = _bulk(MARKER) + _bulk(
    b"a hybridserve run bucket: a hash table from its first write".ljust(65, b".")
)


def hset_batches(
    run: str, rows: pa.RecordBatch, expires_at_ms: int | None, batch_rows: int = 8192
) -> Iterator[tuple[list[bytes | memoryview], int]]:
    """The RESP commands that write ``rows`` into run ``run``, a few buckets at a time (about
    ``batch_rows`` rows each, so the encoded copy stays small): ``(commands, how many)``."""
    buckets = bucket_column(rows.column(0))
    order = np.argsort(buckets, kind="stable")
    counts = np.bincount(buckets, minlength=BUCKETS)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    expiry = None if expires_at_ms is None else _bulk(str(expires_at_ms).encode())
    first = 0
    while first < BUCKETS and bounds[first] < rows.num_rows:
        last = int(np.searchsorted(bounds, bounds[first] + batch_rows, side="right")) - 1
        last = min(BUCKETS, max(last, first + 1))
        part = rows.take(pa.array(order[bounds[first] : bounds[last]]))
        yield _commands(run, part, range(first, last), counts, expiry)
        first = last


def _commands(
    run: str,
    rows: pa.RecordBatch,
    buckets: range,
    counts: np.ndarray[Any, Any],
    expiry: bytes | None,
) -> tuple[list[bytes | memoryview], int]:
    """``HSET`` (and ``PEXPIREAT``) per bucket of ``rows``, which are sorted by bucket, as
    one buffer: each bucket's command head, its rows' member/value pairs, its expiry, laid out
    by one Arrow ``take`` (no Python step per bucket)."""
    members = pc.cast(rows.column(0), pa.binary())
    values = pack_values(rows.column(1), rows.column(2))
    pieces = pc.binary_join_element_wise(
        b"$", _lengths(members), b"\r\n", members, b"\r\n$", _lengths(values), b"\r\n", values,
        b"\r\n", b"",
    )  # fmt: skip
    used = np.flatnonzero(counts[buckets.start : buckets.stop]) + buckets.start
    n = counts[used].astype(np.int64)
    keys = _bucket_keys(run).take(pa.array(used))
    heads = pc.binary_join_element_wise(
        b"*", _decimal(4 + 2 * n), b"\r\n$4\r\nHSET\r\n", keys, _MARKER_PAIR, b""
    )
    m, total = len(used), len(pieces)
    # Bucket i's head goes after the rows, heads and expiries of the buckets before it; its
    # rows follow it, then its expiry.
    per = 2 if expiry is not None else 1
    at = np.concatenate([[0], np.cumsum(n)[:-1]]) + per * np.arange(m)
    order = np.empty(total + per * m, dtype=np.int64)
    order[np.arange(total) + per * np.repeat(np.arange(m), n) + 1] = np.arange(total)
    order[at] = total + np.arange(m)
    parts = [pieces, heads]
    if expiry is not None:
        order[at + n + 1] = total + m + np.arange(m)
        parts.append(pc.binary_join_element_wise(b"*3\r\n$9\r\nPEXPIREAT\r\n", keys, expiry, b""))
    wire = pa.concat_arrays(parts).take(pa.array(order))
    _, offsets_buf, data_buf = wire.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=len(wire) + 1)
    return [memoryview(data_buf)[offsets[0] : offsets[-1]]], per * m


def _lengths(col: pa.Array) -> pa.Array:
    return pc.cast(pc.cast(pc.binary_length(col), pa.string()), pa.binary())


def _decimal(numbers: np.ndarray[Any, Any]) -> pa.Array:
    return pc.cast(pc.cast(pa.array(numbers), pa.string()), pa.binary())


@functools.lru_cache(maxsize=8)
def _bucket_keys(run: str) -> pa.Array:
    """Every bucket key of ``run``, framed as a RESP bulk string, in bucket order."""
    return pa.array([_bulk(bucket_key(run, b).encode()) for b in range(BUCKETS)], pa.binary())


class LineReplies:
    """Reads the replies of pipelined ``HSET`` and ``PEXPIREAT`` commands straight from the
    socket: each is one line (``:n`` an integer, ``-...`` an error). redis-py parses each reply
    in Python, about 2.5 us of CPU a reply, and a million-row run has 160,000 of them; here a
    batch's replies are counted with one scan of their bytes."""

    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self._recv = recv
        self._buf = bytearray()

    def read(self, n: int) -> None:
        """Consume ``n`` replies; the first that is not an integer raises ``ResponseError``."""
        if n <= 0:
            return
        buf = self._buf
        while buf.count(b"\n") < n:
            chunk = self._recv(1 << 18)
            if not chunk:
                raise ConnectionError("Redis closed the connection")
            buf += chunk
        ends = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == 10)
        cut = int(ends[n - 1]) + 1
        part = bytes(buf[:cut])
        del buf[:cut]
        if part.count(b"\n:") + part.startswith(b":") != n:
            lines = part.split(b"\r\n")
            bad = next(line for line in lines if not line.startswith(b":"))
            from redis.exceptions import ResponseError

            raise ResponseError(bad.lstrip(b"-").decode("utf-8", "replace"))

    @property
    def pending(self) -> int:
        """Bytes read past the replies consumed (0 once every sent command was answered)."""
        return len(self._buf)
