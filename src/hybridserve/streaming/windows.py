"""Per-entity windowed aggregates by event time: bucketed rings, updated a micro-batch at a time.

Features that share a window shape (kind, length, step) share one ring of buckets keyed by
``floor(event_time / step)``; a tumbling window is a ring whose step is its length (one
bucket per window start). Each bucket keeps the count, and per field the count, sum, min and
max of the values seen, or the set of distinct values. A feature's current value is read at
the entity's watermark (its latest event time) from the buckets the window covers.

An event older than ``watermark - allowed_lateness`` is *late*: it is not applied. Buckets
older than the longest window plus the lateness are dropped, so the state stays small.

Lateness follows stream order: an entry delivered again (reclaimed from a dead consumer, or
re-read after a restart) may be processed after entries that came after it in the stream,
and is judged against the watermark as it stood at its own position, not one raised by
those later entries. For that the state keeps the entity's last :data:`MARKS` watermark
raises with the stream position of the event behind each (``marks``); an entry older than
all of them is not judged late (with no record of the watermark at its position, waiting
must not make it late). First deliveries are judged against the current watermark.
:class:`EntityState` also remembers the event ids it applied in its latest commit, so a
batch replayed after a crash between the state write and the seen-set write does not count
them twice.

**A micro-batch at a time** (:meth:`WindowSpec.apply_batch`). Only the per-event decisions
(duplicate, late, the watermark) run event by event, and they are a few comparisons each. A
ring's buckets are a float array per entity, one row per bucket (``[index, count, then per
numeric field n, sum, min, max]``); a batch concatenates the rows of all its entities into
one table sorted by (entity, bucket), and applies its events in rounds: round ``r`` adds the
``r``-th applied event of every entity at once (a search for each event's row, new rows
inserted, the columns updated by fancy indexing), then reads the features right after those
events for all of them at once. The sums add up bucket by bucket in event order, and across
the window's buckets in bucket order, as one event at a time would: the values are the same
to the bit whatever the batch boundaries, which is what lets a crashed run's redo score
exactly as a clean run did.

**State encoding** (:meth:`WindowSpec.dumps`): msgpack of the watermark, the last event id,
the ids of the last commit, the marks, each ring's rows as raw little-endian float64 bytes
and its distinct-value sets. States written as JSON by earlier versions are still read.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import compress
from typing import Any, Literal

import msgpack
import numpy as np
import orjson

from hybridserve.config import StreamConfig

Outcome = Literal["applied", "duplicate", "late"]
MARKS = 8
"""Watermark raises remembered per entity, with their stream positions."""
FORMAT = 2
"""The first element of an encoded state (version 1 was JSON)."""
_M = 1 << 40
"""Row keys: ``entity * _M + bucket + _OFF`` sorts a batch's table by (entity, bucket)."""
_OFF = 1 << 39
_F8 = np.dtype("<f8")


@dataclass(slots=True)
class Group:
    """One ring: the features sharing a window shape."""

    kind: str
    window: float
    step: float
    span: int
    """Buckets a window covers."""
    numeric: tuple[str, ...]
    distinct: tuple[str, ...]
    features: list[tuple[str, str, str | None]] = field(default_factory=list)
    """``(feature, agg, field)``."""

    @property
    def width(self) -> int:
        """Columns of a bucket row: index, count, then n, sum, min, max per numeric field."""
        return 2 + 4 * len(self.numeric)


@dataclass(slots=True)
class EntityState:
    watermark: float | None
    last_id: str
    """Id of the event at the watermark (ties broken by id), for the prediction record."""
    last: set[str]
    """Event ids applied by the latest committed batch."""
    rings: list[bytes]
    """Per ring, its bucket rows sorted by index, as float64 bytes (see the module docstring)."""
    uniq: list[list[list[Any]]]
    """Per ring, per distinct field, each bucket row's distinct values, as a sorted list."""
    marks: list[tuple[int, float]] = field(default_factory=list)
    """The last watermark raises: ``(stream position, watermark)``, by position."""
    batch: set[str] = field(default_factory=set)
    """Event ids applied in the batch being processed."""


@dataclass(slots=True)
class WindowEvent:
    """One event for :meth:`WindowSpec.apply_batch`."""

    state: int
    """Index of the entity's state in the batch's list of states."""
    event_id: str
    time: float
    values: dict[str, Any]
    position: int | None = None
    """The event's place in the stream (see :func:`stream_position`)."""
    redelivered: bool = False
    """Delivered before, so it may come after later entries of the stream."""


@dataclass(slots=True)
class BatchWindows:
    outcomes: list[Outcome]
    """Per event."""
    judged: list[float | None]
    """Per event, the watermark it was judged against (``None``: none)."""
    rows: list[dict[str, Any]]
    """Per applied event, in order: the requested features right after it."""
    finals: list[dict[str, Any]]
    """Per state, every feature at its watermark once the batch is applied."""
    changed: list[bool]
    """Per state, whether the batch applied one of its events."""


class WindowSpec:
    """The window features of one stream, grouped into rings."""

    def __init__(self, cfg: StreamConfig) -> None:
        self.lateness = cfg.allowed_lateness
        self.groups: list[Group] = []
        shapes: dict[tuple[str, float, float], Group] = {}
        feats = cfg.windows.features if cfg.windows is not None else {}
        for name, spec in feats.items():
            step = spec.window if spec.kind == "tumbling" else (spec.step or spec.window / 60)
            key = (spec.kind, spec.window, step)
            g = shapes.get(key)
            if g is None:
                span = 1 if spec.kind == "tumbling" else max(1, math.ceil(spec.window / step))
                g = shapes[key] = Group(spec.kind, spec.window, step, span, (), ())
                self.groups.append(g)
            g.features.append((name, spec.agg, spec.field))
            if spec.agg == "distinct" and spec.field and spec.field not in g.distinct:
                g.distinct += (spec.field,)
            elif spec.agg in ("sum", "mean", "min", "max") and spec.field not in g.numeric:
                g.numeric += (spec.field,)  # type: ignore[operator]
        self.names = tuple(name for g in self.groups for name, _, _ in g.features)

    def new_state(self) -> EntityState:
        return EntityState(
            None,
            "",
            set(),
            [b"" for _ in self.groups],
            [[[] for _ in g.distinct] for g in self.groups],
        )

    # -- (de)serialization ---------------------------------------------------------------

    def dumps(self, st: EntityState) -> bytes:
        marks = [x for m in st.marks for x in m]
        return msgpack.packb(  # type: ignore[no-any-return]
            [FORMAT, st.watermark, st.last_id, sorted(st.last), marks, st.rings, st.uniq]
        )

    def loads(self, data: bytes) -> EntityState:
        if data[:1] == b"{":
            return self._loads_json(data)
        _, w, last_id, last, flat, rings, uniq = msgpack.unpackb(data, use_list=True)
        st = EntityState(w, last_id, set(last), [], [])
        st.marks = [(int(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]
        for i, g in enumerate(self.groups):  # a window shape added since starts empty
            raw = rings[i] if i < len(rings) else b""
            st.rings.append(raw)
            n = len(raw) // (8 * g.width)
            sets = uniq[i] if i < len(uniq) else []
            st.uniq.append(
                [
                    sets[k] if k < len(sets) else [[] for _ in range(n)]
                    for k in range(len(g.distinct))
                ]
            )
        return st

    def _loads_json(self, data: bytes) -> EntityState:
        """A state written by an earlier version (JSON, one dict of buckets per ring)."""
        raw = orjson.loads(data)
        st = EntityState(raw["w"], raw["e"], set(raw["l"]), [], [])
        st.marks = [(int(p), float(w)) for p, w in raw.get("m", ())]
        old = raw["r"]
        for i, g in enumerate(self.groups):
            buckets = sorted(old[i] if i < len(old) else [], key=lambda b: b[0])
            rows = np.zeros((len(buckets), g.width), dtype=_F8)
            for r, (idx, count, stats, _) in enumerate(buckets):
                rows[r, 0], rows[r, 1] = idx, count
                for k, f in enumerate(g.numeric):
                    rows[r, 2 + 4 * k : 6 + 4 * k] = stats.get(f, [0, 0.0, math.inf, -math.inf])
            st.rings.append(rows.astype(_F8).tobytes())
            st.uniq.append([[sorted(b[3].get(f, ())) for b in buckets] for f in g.distinct])
        return st

    # -- updates and reads ---------------------------------------------------------------

    def judged(self, st: EntityState, position: int | None, redelivered: bool) -> float | None:
        """The watermark an event at stream ``position`` is judged against (``None``: none)."""
        marks = st.marks
        if not redelivered or position is None or not marks or position > marks[-1][0]:
            return st.watermark
        for p, w in reversed(marks):
            if p < position:
                return w
        return None  # older than every remembered raise

    def _decide(
        self, states: Sequence[EntityState], events: Sequence[WindowEvent]
    ) -> tuple[list[Outcome], list[float | None], list[int], list[float]]:
        """Event by event, in stream order: duplicate, late or applied (then the entity's
        watermark, last id and marks move). Returns the outcomes, the watermarks judged
        against, the indices of the applied events and the watermark right after each."""
        outcomes: list[Outcome] = []
        judged: list[float | None] = []
        applied: list[int] = []
        after: list[float] = []
        lateness = self.lateness
        for i, ev in enumerate(events):
            st = states[ev.state]
            eid, ts = ev.event_id, ev.time
            w = self.judged(st, ev.position, ev.redelivered)
            judged.append(w)
            if eid in st.last or eid in st.batch:
                outcomes.append("duplicate")
                continue
            if w is not None and ts < w - lateness:
                outcomes.append("late")
                continue
            w = st.watermark
            if w is None or ts > w or (ts == w and eid > st.last_id):
                st.watermark, st.last_id = ts, eid
            if ev.position is not None:
                _mark(st.marks, ev.position, ts)
            st.batch.add(eid)
            outcomes.append("applied")
            applied.append(i)
            after.append(st.watermark if st.watermark is not None else ts)
        return outcomes, judged, applied, after

    def apply_batch(
        self,
        states: Sequence[EntityState],
        events: Sequence[WindowEvent],
        names: Sequence[str] = (),
    ) -> BatchWindows:
        """Apply ``events`` (in stream order) to ``states``; finish the batch (drop buckets no
        window or late event can reach, remember the applied ids, trim the marks).

        ``rows`` holds, for each applied event, the features in ``names`` right after it
        (none when ``names`` is empty); ``finals`` every feature of every state at the end."""
        outcomes, judged, applied, after_list = self._decide(states, events)
        n_states = len(states)
        ent = np.fromiter((events[i].state for i in applied), np.int64, len(applied))
        times = np.fromiter((events[i].time for i in applied), _F8, len(applied))
        after = np.array(after_list, dtype=_F8)
        rank = _rank(ent)
        wanted = set(names)
        rows: list[dict[str, Any]] = [{} for _ in applied]
        finals: list[dict[str, Any]] = [{} for _ in range(n_states)]
        watermarks = np.array(
            [st.watermark if st.watermark is not None else 0.0 for st in states], dtype=_F8
        )
        for gi in range(len(self.groups)):
            ring = _Ring(self, gi, states)
            ring.apply(applied, events, ent, times, after, rank, wanted, rows)
            ring.read(np.arange(n_states, dtype=np.int64), watermarks, finals, None)
            ring.finish(states, self.lateness)
        changed = [bool(st.batch) for st in states]
        for st in states:
            if st.batch:
                st.last, st.batch = st.batch, set()
            del st.marks[:-MARKS]
        return BatchWindows(outcomes, judged, rows, finals, changed)

    def values(self, st: EntityState) -> dict[str, Any]:
        """Every window feature's value at the entity's watermark."""
        return self.apply_batch([st], []).finals[0]


def _rank(ent: np.ndarray) -> np.ndarray:
    """Each applied event's place among its entity's applied events in the batch (0, 1, ...)."""
    if not len(ent):
        return ent
    order = np.argsort(ent, kind="stable")
    sorted_ent = ent[order]
    starts = np.flatnonzero(np.r_[True, sorted_ent[1:] != sorted_ent[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, len(ent)]))
    rank = np.empty_like(ent)
    rank[order] = np.arange(len(ent)) - first
    return rank


class _Ring:
    """One ring's buckets of all a batch's states: one table sorted by (entity, bucket)."""

    def __init__(self, spec: WindowSpec, gi: int, states: Sequence[EntityState]) -> None:
        g = self.g = spec.groups[gi]
        self.gi = gi
        blocks = [st.rings[gi] for st in states]
        row = 8 * g.width
        sizes = np.fromiter((len(b) // row for b in blocks), np.int64, len(blocks))
        self.table = np.frombuffer(bytearray(b"".join(blocks)), dtype=_F8).reshape(-1, g.width)
        ent = np.repeat(np.arange(len(blocks), dtype=np.int64), sizes)
        self.key = ent * _M + self.table[:, 0].astype(np.int64) + _OFF
        self.uniq = [[s for st in states for s in st.uniq[gi][k]] for k in range(len(g.distinct))]
        self.neutral = np.zeros(g.width, dtype=_F8)
        self.neutral[4::4], self.neutral[5::4] = math.inf, -math.inf

    def _rows(self, keys: np.ndarray) -> np.ndarray:
        """The rows of ``keys`` (distinct), inserting empty buckets for those not there."""
        pos = np.searchsorted(self.key, keys)
        found = pos < len(self.key)
        found[found] = self.key[pos[found]] == keys[found]
        if found.all():
            return pos
        new = np.unique(keys[~found])
        at = np.searchsorted(self.key, new)
        rows = np.tile(self.neutral, (len(new), 1))
        rows[:, 0] = (new % _M) - _OFF
        self.table = np.insert(self.table, at, rows, axis=0)
        self.key = np.insert(self.key, at, new)
        for sets in self.uniq:
            for p in reversed(at.tolist()):  # highest first: the lower positions stay valid
                sets.insert(p, [])
        return np.searchsorted(self.key, keys)

    def apply(
        self,
        applied: list[int],
        events: Sequence[WindowEvent],
        ent: np.ndarray,
        times: np.ndarray,
        after: np.ndarray,
        rank: np.ndarray,
        wanted: set[str],
        rows: list[dict[str, Any]],
    ) -> None:
        """Add the applied events, round by round (the ``r``-th event of each entity in round
        ``r``), reading the ``wanted`` features right after each into ``rows``."""
        g = self.g
        if not len(ent):
            return
        keys = ent * _M + np.floor(times / g.step).astype(np.int64) + _OFF
        nums = []
        for f in g.numeric:
            raw = [events[i].values.get(f) for i in applied]
            has = np.fromiter((v is not None for v in raw), bool, len(raw))
            vals = np.fromiter((0.0 if v is None else float(v) for v in raw), _F8, len(raw))
            nums.append((vals, has))
        uniq = [[events[i].values.get(f) for i in applied] for f in g.distinct]
        feats = [x for x in g.features if x[0] in wanted]
        order = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[order], np.arange(int(rank.max()) + 2)).tolist()
        for r in range(len(bounds) - 1):
            sel = order[bounds[r] : bounds[r + 1]]
            pos = self._rows(keys[sel])
            t = self.table
            t[pos, 1] += 1.0
            for k, (vals, has) in enumerate(nums):
                c, h, v = 2 + 4 * k, has[sel], vals[sel]
                t[pos, c] += h
                t[pos, c + 1] += np.where(h, v, 0.0)  # one event at a time, in stream order
                t[pos, c + 2] = np.minimum(t[pos, c + 2], np.where(h, v, math.inf))
                t[pos, c + 3] = np.maximum(t[pos, c + 3], np.where(h, v, -math.inf))
            for k, values in enumerate(uniq):
                sets = self.uniq[k]
                for i, p in zip(sel.tolist(), pos.tolist(), strict=True):
                    v = values[i]
                    if v is not None:  # kept sorted, as encoded: a few values per bucket
                        bucket = sets[p]
                        j = bisect_left(bucket, v)
                        if j == len(bucket) or bucket[j] != v:
                            bucket.insert(j, v)
            if feats:
                self.read(ent[sel], after[sel], [rows[i] for i in sel.tolist()], feats)

    def read(
        self,
        ent: np.ndarray,
        watermarks: np.ndarray,
        out: list[dict[str, Any]],
        feats: list[tuple[str, str, str | None]] | None,
    ) -> None:
        """Into ``out[q]``: the features (``None``: all the ring's) of entity ``ent[q]`` at
        watermark ``watermarks[q]``."""
        g, t = self.g, self.table
        hi = np.floor(watermarks / g.step).astype(np.int64)
        base = ent * _M + _OFF
        start = np.searchsorted(self.key, base + hi - g.span + 1)
        end = np.searchsorted(self.key, base + hi, side="right")
        width = int((end - start).max()) if len(start) else 0
        cols = start[:, None] + np.arange(width)
        valid = cols < end[:, None]
        sub = (
            t[np.minimum(cols, max(0, len(t) - 1))] if len(t) else np.zeros((len(ent), 0, g.width))
        )
        sub = np.where(valid[..., None], sub, self.neutral)
        count = sub[..., 1].sum(axis=1)
        spans = list(zip(start.tolist(), end.tolist(), strict=True))
        for name, agg, f in g.features if feats is None else feats:
            if agg == "count":
                values: list[Any] = count.tolist()
            elif agg == "distinct":
                sets = self.uniq[g.distinct.index(f or "")]
                values = [float(len(set().union(*sets[a:b]))) for a, b in spans]
            else:
                values = _numeric(sub, 2 + 4 * g.numeric.index(f or ""), agg)
            for d, v in zip(out, values, strict=True):
                d[name] = v

    def finish(self, states: Sequence[EntityState], lateness: float) -> None:
        """Drop the buckets no window or late event can reach; hand each state its rows."""
        g, t, key = self.g, self.table, self.key
        w = np.array(
            [st.watermark if st.watermark is not None else -math.inf for st in states], _F8
        )
        oldest = np.floor((w - lateness - g.window) / g.step)
        keep = t[:, 0] >= oldest[key // _M] if len(t) else np.ones(0, bool)
        uniq = self.uniq
        if not keep.all():
            t, key = t[keep], key[keep]
            flags = keep.tolist()
            uniq = [list(compress(sets, flags)) for sets in uniq]
        b = np.searchsorted(key, np.arange(len(states) + 1, dtype=np.int64) * _M).tolist()
        data, row, gi = t.astype(_F8, copy=False).tobytes(), 8 * g.width, self.gi
        for i, st in enumerate(states):
            lo, hi = b[i], b[i + 1]
            st.rings[gi] = data[lo * row : hi * row]
            st.uniq[gi] = [sets[lo:hi] for sets in uniq]


def _numeric(sub: np.ndarray, c: int, agg: str) -> list[Any]:
    """A numeric aggregate per query from the gathered bucket rows ``sub`` (query x bucket)."""
    n = sub[..., c].sum(axis=1)
    some = (n > 0).tolist()
    if agg in ("sum", "mean"):
        # Bucket by bucket in bucket order, as a sequential sum: equal to the bit on replay.
        s = np.add.accumulate(sub[..., c + 1], axis=1)[:, -1] if sub.shape[1] else n * 0.0
        if agg == "sum":
            return list(s.tolist())
        vals = (s / np.where(n > 0, n, 1.0)).tolist()
    elif agg == "min":
        vals = sub[..., c + 2].min(axis=1, initial=math.inf).tolist()
    else:
        vals = sub[..., c + 3].max(axis=1, initial=-math.inf).tolist()
    return [v if ok else None for v, ok in zip(vals, some, strict=True)]


def _mark(marks: list[tuple[int, float]], position: int, ts: float) -> None:
    """Record an event at ``position`` in the staircase of watermark raises: ``(p, w)`` says
    the events up to position ``p`` reach time ``w``. Kept sorted by position."""
    i = len(marks)
    while i > 0 and marks[i - 1][0] > position:
        i -= 1
    before = marks[i - 1][1] if i > 0 else None
    if before is not None and ts <= before:
        return  # no raise at this position
    if i > 0 and marks[i - 1][0] == position:
        i -= 1
        marks[i] = (position, ts)
    else:
        marks.insert(i, (position, ts))
    for k in range(i + 1, len(marks)):  # the later positions' watermarks include it now
        if marks[k][1] < ts:
            marks[k] = (marks[k][0], ts)


def stream_position(entry_id: str) -> int | None:
    """An entry id's place in the stream, for ids of the form ``ms-seq`` (Redis Streams, the
    in-process log); ``None`` for others (replay ``file:row``)."""
    ms, dash, seq = entry_id.partition("-")
    if not dash or not ms.isdigit() or not seq.isdigit():
        return None
    return int(ms) * 1_000_000 + int(seq)
