"""A reference profile's bins: the per-edge count and searchsorted agree on any values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridserve.quality import profile


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=300),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=30),
    st.integers(0, 30),
)
def test_few_edges_count_as_searchsorted_does(
    values: list[float], reference: list[float], on_edges: int
) -> None:
    fp = profile.profile_numeric(reference, bins=10)
    if not fp.edges:
        return
    arr = np.asarray(values, dtype=np.float64)
    edges = np.asarray(fp.edges)
    arr[: min(on_edges, arr.size)] = edges[np.arange(min(on_edges, arr.size)) % edges.size]
    fast = profile.bin_counts(fp, arr)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(profile, "_FEW_EDGES", -1)
        slow = profile.bin_counts(fp, arr)
    assert fast[1:] == slow[1:]
    np.testing.assert_array_equal(fast[0], slow[0])
