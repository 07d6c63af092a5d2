"""Sticky hash splits (canary, shadow): stable, proportional, nested as the percent grows."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hybridserve.routing.rollout import bucket, in_share

KEYS = [f"user-{i}" for i in range(10_000)]


@given(st.text(max_size=64), st.text(max_size=16))
def test_bucket_is_stable_and_in_unit_interval(entity: str, salt: str) -> None:
    b = bucket(entity, salt)
    assert 0.0 <= b < 1.0
    assert bucket(entity, salt) == b


def test_share_is_close_to_the_percent() -> None:
    for percent in (1, 10, 50, 90):
        share = sum(in_share(k, percent, "route") for k in KEYS) / len(KEYS) * 100
        assert abs(share - percent) < 2, (percent, share)


def test_bounds() -> None:
    assert all(in_share(k, 100) for k in KEYS[:500])
    assert not any(in_share(k, 0) for k in KEYS[:500])
    assert not any(in_share(k, -5) for k in KEYS[:500])


def test_growing_the_percent_keeps_entities_already_in() -> None:
    five = {k for k in KEYS if in_share(k, 5, "r")}
    ten = {k for k in KEYS if in_share(k, 10, "r")}
    assert five < ten


def test_salts_split_independently() -> None:
    """The canary and the shadow of a route do not pick the same entities."""
    canary = {k for k in KEYS if in_share(k, 10, "fraud")}
    shadow = {k for k in KEYS if in_share(k, 10, "shadow:fraud")}
    other = {k for k in KEYS if in_share(k, 10, "other")}
    for a, b in ((canary, shadow), (canary, other)):
        overlap = len(a & b) / len(a)
        assert 0.05 < overlap < 0.15, overlap  # ~10%, as for independent splits
