"""Window aggregates against a brute-force recomputation from the events themselves.

The windows are applied a micro-batch at a time (all entities of a batch at once, in
rounds); these tests cut the same events into batches at random and check every event's
features against the events, and that the batch boundaries change nothing, to the bit.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridserve.config import load_project
from hybridserve.examples.fraud import PROJECT_FILE
from hybridserve.streaming.windows import EntityState, WindowEvent, WindowSpec

CFG = load_project(PROJECT_FILE, env=False).streams["transactions"]
FEATURES = CFG.windows.features if CFG.windows is not None else {}
NAMES = list(FEATURES)
BASE = 1_800_000_000.0

events_strategy = st.lists(
    st.tuples(
        st.integers(0, 2),  # entity
        st.floats(0.0, 4 * 3600.0),  # event time offset (s)
        st.floats(0.0, 500.0) | st.none(),  # amount (None: missing)
        st.integers(0, 9),  # merchant
        st.booleans(),  # is_foreign
    ),
    min_size=1,
    max_size=60,
)
cuts_strategy = st.lists(st.integers(1, 9), min_size=1, max_size=30)


def _expected(applied: list[tuple[float, dict[str, Any]]], watermark: float) -> dict[str, Any]:
    """Each feature from the applied events, by the documented bucket rule."""
    out: dict[str, Any] = {}
    for name, spec in FEATURES.items():
        if spec.kind == "tumbling":
            start = math.floor(watermark / spec.window)
            inside = [v for t, v in applied if math.floor(t / spec.window) == start]
        else:
            step = spec.step or spec.window / 60
            hi = math.floor(watermark / step)
            lo = hi - max(1, math.ceil(spec.window / step)) + 1
            inside = [v for t, v in applied if lo <= math.floor(t / step) <= hi]
        numeric = spec.field is not None and spec.agg != "distinct"
        vals = [float(v[spec.field]) for v in inside if numeric and v[spec.field] is not None]
        if spec.agg == "count":
            out[name] = float(len(inside))
        elif spec.agg == "sum":
            out[name] = sum(vals)
        elif spec.agg == "mean":
            out[name] = sum(vals) / len(vals) if vals else None
        elif spec.agg == "max":
            out[name] = max(vals) if vals else None
        elif spec.agg == "distinct":
            out[name] = float(len({v[spec.field] for v in inside}))
    return out


def _batches(n: int, cuts: list[int]) -> list[range]:
    out, i, k = [], 0, 0
    while i < n:
        size = cuts[k % len(cuts)]
        out.append(range(i, min(n, i + size)))
        i, k = i + size, k + 1
    return out


def _run(
    events: list[tuple[int, float, float | None, int, bool]], cuts: list[int], roundtrip: bool
) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """Outcomes, the rows of the applied events and the final features, batch by batch."""
    spec = WindowSpec(CFG)
    states: dict[int, EntityState] = {}
    outcomes: list[str] = []
    rows: list[dict[str, Any]] = []
    for batch in _batches(len(events), cuts):
        entities = sorted({events[i][0] for i in batch})
        index = {e: k for k, e in enumerate(entities)}
        batch_states = [states.get(e) or spec.new_state() for e in entities]
        evs = []
        for i in batch:
            entity, offset, amount, merchant, foreign = events[i]
            values = {"amount": amount, "merchant_id": f"m{merchant}", "is_foreign": foreign}
            evs.append(WindowEvent(index[entity], f"e{i:04d}", BASE + offset, values, i))
        result = spec.apply_batch(batch_states, evs, NAMES)
        outcomes += result.outcomes
        rows += result.rows
        for e, s in zip(entities, batch_states, strict=True):
            states[e] = spec.loads(spec.dumps(s)) if roundtrip else s
            assert result.finals[index[e]] == spec.values(states[e])
    return outcomes, rows, [spec.values(states[e]) for e in sorted(states)]


@settings(max_examples=150, deadline=None)
@given(events=events_strategy, cuts=cuts_strategy, roundtrip=st.booleans())
def test_windows_equal_a_recomputation_from_the_applied_events(
    events: list[tuple[int, float, float | None, int, bool]], cuts: list[int], roundtrip: bool
) -> None:
    outcomes, rows, _ = _run(events, cuts, roundtrip)
    applied: dict[int, list[tuple[float, dict[str, Any]]]] = {}
    watermark: dict[int, float] = {}
    k = 0
    for i, (entity, offset, amount, merchant, foreign) in enumerate(events):
        t = BASE + offset
        w = watermark.get(entity)
        late = w is not None and t < w - CFG.allowed_lateness
        assert outcomes[i] == ("late" if late else "applied")
        if late:
            continue
        values = {"amount": amount, "merchant_id": f"m{merchant}", "is_foreign": foreign}
        applied.setdefault(entity, []).append((t, values))
        watermark[entity] = t if w is None else max(w, t)
        want = _expected(applied[entity], watermark[entity])
        got = rows[k]
        k += 1
        assert got.keys() == want.keys()
        for name, value in want.items():
            if value is None:
                assert got[name] is None, name
            else:
                assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name


@settings(max_examples=100, deadline=None)
@given(events=events_strategy, a=cuts_strategy, b=cuts_strategy, roundtrip=st.booleans())
def test_batch_boundaries_change_nothing_to_the_bit(
    events: list[tuple[int, float, float | None, int, bool]],
    a: list[int],
    b: list[int],
    roundtrip: bool,
) -> None:
    """What a crash-and-redo relies on: the same events cut into other batches give the same
    rows (floats equal, not approximately) and the same features at the end."""
    assert _run(events, a, roundtrip) == _run(events, b, not roundtrip)


def test_an_event_applied_twice_is_a_duplicate() -> None:
    spec = WindowSpec(CFG)
    state = spec.new_state()
    values = {"amount": 5.0, "merchant_id": "m1", "is_foreign": False}
    twice = [WindowEvent(0, "a", BASE, values), WindowEvent(0, "a", BASE, values)]
    assert spec.apply_batch([state], twice).outcomes == ["applied", "duplicate"]
    state = spec.loads(spec.dumps(state))
    replay = spec.apply_batch([state], [WindowEvent(0, "a", BASE, values)])
    assert replay.outcomes == ["duplicate"]  # replayed after a commit
    assert spec.values(state)["txn_count_10m"] == 1.0


def test_a_state_written_as_json_by_an_earlier_version_is_read() -> None:
    import orjson

    spec = WindowSpec(CFG)
    t = BASE + 30.0
    old = {  # one event: amount 5, merchant m1, at BASE + 30 s, as the JSON format kept it
        "w": t,
        "e": "a",
        "l": ["a"],
        "r": [
            [[math.floor(t / 60), 1, {"amount": [1, 5.0, 5.0, 5.0]}, {}]],
            [
                [
                    math.floor(t / 300),
                    1,
                    {"amount": [1, 5.0, 5.0, 5.0], "is_foreign": [1, 0.0, 0.0, 0.0]},
                    {"merchant_id": ["m1"]},
                ]
            ],
            [[math.floor(t / 3600), 1, {}, {}]],
        ],
    }
    state = spec.loads(orjson.dumps(old))
    assert spec.values(state) == {
        "txn_count_10m": 1.0,
        "amount_sum_10m": 5.0,
        "amount_mean_1h": 5.0,
        "amount_max_1h": 5.0,
        "distinct_merchants_1h": 1.0,
        "foreign_count_1h": 0.0,
        "txn_count_hour": 1.0,
    }
    values = {"amount": 7.0, "merchant_id": "m2", "is_foreign": True}
    spec.apply_batch([state], [WindowEvent(0, "b", t + 1, values)])
    assert spec.values(spec.loads(spec.dumps(state)))["distinct_merchants_1h"] == 2.0
