"""The reason label of fallback metrics, read from an entity's trail."""

import pytest

from hybridserve.routing.router import _reason


@pytest.mark.parametrize(
    ("trail", "reason"),
    [
        (
            ["l1: miss", "store: miss", "features: skipped (feature_store circuit open)"],
            "breaker_open",
        ),
        (["store: failed (ConnectionError: refused)", "compute: x"], "error"),
        (
            [
                "store: miss",
                "features: failed (OSError: down)",
                "compute: m/1: missing feature amount",
            ],
            "error",
        ),
        (["store: miss", "compute: timed out after 50 ms"], "timeout"),
        (["store: miss", "compute: shed (queue full)"], "overload"),
        (["store: miss", "compute: timed out queueing for m/1 (busy)"], "overload"),
        (["store: miss", "features: skipped (deadline passed)"], "deadline"),
        (["store: miss", "compute: m/1: missing feature amount"], "invalid_features"),
        (["l1: miss", "store: stale (age 99s > 10s)"], "stale"),
        (["store: made by m/1, route serves m/2"], "other_version"),
        (["l1: miss", "store: miss", "fallback stale_prediction: none stored"], "miss"),
    ],
)
def test_reason(trail: list[str], reason: str) -> None:
    assert _reason(trail) == reason
