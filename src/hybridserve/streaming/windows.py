"""Per-entity windowed aggregates by event time: bucketed rings and the state that holds them.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from hybridserve.config import StreamConfig

Outcome = Literal["applied", "duplicate", "late"]
MARKS = 8
"""Watermark raises remembered per entity, with their stream positions."""
Bucket = list[Any]
"""``[count, {field: [n, sum, min, max]}, {field: set_of_values}]``."""


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

    def new_state(self) -> EntityState:
        return EntityState(None, "", set(), [{} for _ in self.groups], [])

    # -- (de)serialization ---------------------------------------------------------------

    def dumps(self, st: EntityState) -> bytes:
        rings = [
            [[i, b[0], b[1], {f: sorted(s) for f, s in b[2].items()}] for i, b in ring.items()]
            for ring in st.rings
        ]
        body: dict[str, Any] = {
            "w": st.watermark,
            "e": st.last_id,
            "l": sorted(st.last),
            "r": rings,
        }
        if st.marks:
            body["m"] = st.marks
        return orjson.dumps(body)

    def loads(self, data: bytes) -> EntityState:
        raw = orjson.loads(data)
        rings: list[dict[int, Bucket]] = []
        for ring in raw["r"]:
            rings.append({b[0]: [b[1], b[2], {f: set(v) for f, v in b[3].items()}] for b in ring})
        while len(rings) < len(self.groups):  # a window shape was added since
            rings.append({})
        marks = [(int(p), float(w)) for p, w in raw.get("m", ())]
        return EntityState(raw["w"], raw["e"], set(raw["l"]), rings[: len(self.groups)], marks)

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

    def apply(
        self,
        st: EntityState,
        event_id: str,
        ts: float,
        values: dict[str, Any],
        position: int | None = None,
        redelivered: bool = False,
    ) -> Outcome:
        """Add one event to its buckets, unless it was applied already or is too late.

        ``position`` is the event's place in the stream (see :func:`stream_position`);
        ``redelivered`` says it was delivered before, so it may come after later entries."""
        if event_id in st.last or event_id in st.batch:
            return "duplicate"
        w = self.judged(st, position, redelivered)
        if w is not None and ts < w - self.lateness:
            return "late"
        w = st.watermark
        for g, ring in zip(self.groups, st.rings, strict=True):
            idx = math.floor(ts / g.step)
            b = ring.get(idx)
            if b is None:
                b = ring[idx] = [0, {}, {}]
            b[0] += 1
            for f in g.numeric:
                v = values.get(f)
                if v is None:
                    continue
                v = float(v)
                s = b[1].get(f)
                if s is None:
                    b[1][f] = [1, v, v, v]
                else:
                    s[0] += 1
                    s[1] += v
                    if v < s[2]:
                        s[2] = v
                    if v > s[3]:
                        s[3] = v
            for f in g.distinct:
                v = values.get(f)
                if v is not None:
                    b[2].setdefault(f, set()).add(v)
        if w is None or ts > w or (ts == w and event_id > st.last_id):
            st.watermark, st.last_id = ts, event_id
        if position is not None:
            _mark(st.marks, position, ts)
        st.batch.add(event_id)
        return "applied"

    def values(self, st: EntityState) -> dict[str, Any]:
        """Every window feature's value at the entity's watermark."""
        out: dict[str, Any] = {}
        w = st.watermark if st.watermark is not None else 0.0
        for g, ring in zip(self.groups, st.rings, strict=True):
            hi = math.floor(w / g.step)
            lo = hi - g.span + 1
            count = 0
            num: dict[str, list[float]] = {}
            uniq: dict[str, set[Any]] = {}
            shared = set(g.distinct)  # fields whose set in ``uniq`` is still a bucket's own
            for i in sorted(ring):  # sorted: sums add up in the same order on every replay
                if i < lo or i > hi:
                    continue
                b = ring[i]
                count += b[0]
                for f, s in b[1].items():
                    t = num.get(f)
                    if t is None:
                        num[f] = list(s)
                    else:
                        t[0] += s[0]
                        t[1] += s[1]
                        t[2] = min(t[2], s[2])
                        t[3] = max(t[3], s[3])
                for f, vals in b[2].items():
                    u = uniq.get(f)
                    if u is None:
                        uniq[f] = vals  # a bucket's own set: copied only when another joins
                    elif f in shared:
                        uniq[f] = u | vals
                        shared.discard(f)
                    else:
                        u |= vals
            for name, agg, f in g.features:
                out[name] = _pick(count, num.get(f or ""), uniq.get(f or ""), agg)
        return out

    def finish(self, st: EntityState) -> None:
        """After a batch: drop buckets no window or late event can reach; remember the ids."""
        if st.watermark is not None:
            for g, ring in zip(self.groups, st.rings, strict=True):
                oldest = math.floor((st.watermark - self.lateness - g.window) / g.step)
                for idx in [i for i in ring if i < oldest]:
                    del ring[idx]
        if st.batch:
            st.last, st.batch = st.batch, set()
        del st.marks[:-MARKS]


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


def _pick(count: int, stats: list[float] | None, uniq: set[Any] | None, agg: str) -> Any:
    if agg == "count":
        return float(count)
    if agg == "distinct":
        return float(len(uniq)) if uniq else 0.0
    if agg == "sum":
        return stats[1] if stats else 0.0
    if not stats:
        return None
    if agg == "mean":
        return stats[1] / stats[0]
    return stats[2] if agg == "min" else stats[3]


@dataclass(slots=True)
class EntityState:
    watermark: float | None
    last_id: str
    """Id of the event at the watermark (ties broken by id), for the prediction record."""
    last: set[str]
    """Event ids applied by the latest committed batch."""
    rings: list[dict[int, Bucket]]
    marks: list[tuple[int, float]] = field(default_factory=list)
    """The last watermark raises: ``(stream position, watermark)``, by position."""
    batch: set[str] = field(default_factory=set)
    """Event ids applied in the batch being processed."""
