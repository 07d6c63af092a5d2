"""Window aggregates against a brute-force recomputation from the events themselves."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridserve.config import load_project
from hybridserve.examples.fraud import PROJECT_FILE
from hybridserve.streaming.windows import WindowSpec

CFG = load_project(PROJECT_FILE, env=False).streams["transactions"]
FEATURES = CFG.windows.features if CFG.windows is not None else {}
BASE = 1_800_000_000.0

events_strategy = st.lists(
    st.tuples(
        st.floats(0.0, 4 * 3600.0),  # event time offset (s)
        st.floats(0.0, 500.0),  # amount
        st.integers(0, 9),  # merchant
        st.booleans(),  # is_foreign
    ),
    min_size=1,
    max_size=60,
)


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
        vals = [float(v[spec.field]) for v in inside] if numeric else []
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


@settings(max_examples=150, deadline=None)
@given(events=events_strategy, batch=st.integers(1, 7), roundtrip=st.booleans())
def test_windows_equal_a_recomputation_from_the_applied_events(
    events: list[tuple[float, float, int, bool]], batch: int, roundtrip: bool
) -> None:
    spec = WindowSpec(CFG)
    state = spec.new_state()
    applied: list[tuple[float, dict[str, Any]]] = []
    watermark: float | None = None
    for i, (offset, amount, merchant, foreign) in enumerate(events):
        t = BASE + offset
        values = {"amount": amount, "merchant_id": f"m{merchant}", "is_foreign": foreign}
        outcome = spec.apply(state, f"e{i:04d}", t, values)
        late = watermark is not None and t < watermark - CFG.allowed_lateness
        assert outcome == ("late" if late else "applied")
        if not late:
            applied.append((t, values))
            watermark = t if watermark is None else max(watermark, t)
        if (i + 1) % batch == 0:  # a batch boundary: finish, maybe through storage
            spec.finish(state)
            if roundtrip:
                state = spec.loads(spec.dumps(state))
        assert watermark is not None
        got = spec.values(state)
        want = _expected(applied, watermark)
        assert got.keys() == want.keys()
        for name in want:
            assert got[name] == pytest.approx(want[name], rel=1e-9, abs=1e-9), name


def test_an_event_applied_twice_is_a_duplicate() -> None:
    spec = WindowSpec(CFG)
    state = spec.new_state()
    values = {"amount": 5.0, "merchant_id": "m1", "is_foreign": False}
    assert spec.apply(state, "a", BASE, values) == "applied"
    assert spec.apply(state, "a", BASE, values) == "duplicate"
    spec.finish(state)
    state = spec.loads(spec.dumps(state))
    assert spec.apply(state, "a", BASE, values) == "duplicate"  # replayed after a commit
    assert spec.values(state)["txn_count_10m"] == 1.0
