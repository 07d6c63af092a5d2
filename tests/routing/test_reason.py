"""Why an entity fell back (the reason label of fallback metrics), from its typed notes."""

from __future__ import annotations

from typing import Any

import pytest

from hybridserve.routing.job import Entity, Reason

R = Reason


@pytest.mark.parametrize(
    ("notes", "reason"),
    [
        ([("l1", R.MISS), ("store", R.MISS), ("features", R.BREAKER_OPEN)], R.BREAKER_OPEN),
        ([("store", R.ERROR), ("compute", R.INVALID_FEATURES)], R.ERROR),
        ([("store", R.MISS), ("features", R.ERROR), ("compute", R.INVALID_FEATURES)], R.ERROR),
        ([("store", R.MISS), ("compute", R.TIMEOUT)], R.TIMEOUT),
        ([("store", R.MISS), ("compute", R.OVERLOAD)], R.OVERLOAD),
        ([("store", R.MISS), ("features", R.DEADLINE)], R.DEADLINE),
        ([("store", R.MISS), ("compute", R.INVALID_FEATURES)], R.INVALID_FEATURES),
        ([("l1", R.MISS), ("store", R.STALE)], R.STALE),
        ([("store", R.OTHER_VERSION), ("store", R.STALE)], R.OTHER_VERSION),
        ([("l1", R.MISS), ("store", R.MISS), ("fallback stale_prediction", R.MISS)], R.MISS),
        # A fallback step's own failure is not why the primary path failed.
        ([("store", R.STALE), ("fallback model m/1", R.TIMEOUT)], R.STALE),
    ],
)
def test_reason(notes: list[tuple[str, Reason]], reason: Reason) -> None:
    e = Entity("card", None, model=None)  # type: ignore[arg-type]
    for step, why in notes:
        e.note(step, why, primary=not step.startswith("fallback"))
    assert e.reason() is reason


def test_trail_is_rendered_from_the_notes() -> None:
    e: Any = Entity("card", None, model=None)  # type: ignore[arg-type]
    e.note("l1", R.MISS)
    e.note("store", R.STALE, "stale (age 99s > 10s)")
    e.note("features", R.BREAKER_OPEN, "skipped (feature_store circuit open)")
    assert e.trail() == [
        "l1: miss",
        "store: stale (age 99s > 10s)",
        "features: skipped (feature_store circuit open)",
    ]
