"""The cost arithmetic of ``hybridserve advise`` on fixed inputs, worked by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hybridserve.quality.advise import Inputs, advise

BASE = Inputs(
    requests_per_s=10.0,  # 864,000 answers a day
    entities=100_000,
    active_entities=20_000,
    hit_rate=0.8,
    batch_core_s_per_row=0.0001,
    batch_rows_per_s=1000.0,  # a full run takes 100 s, the active fifth 20 s
    batch_interval_s=86400.0,
    online_core_s_per_answer=0.002,
    lookup_core_s_per_answer=0.0001,
    freshness_s=3600.0,
    core_hour=0.05,
)


def _by_mode(inputs: Inputs) -> dict[str, tuple[float, float, float, bool]]:
    advice = advise(inputs)
    return {
        m.mode: (m.core_s_per_day, m.cost_per_day, m.staleness_s, m.meets_freshness)
        for m in advice.modes
    }


def test_an_hour_of_staleness_is_cheapest_in_batch() -> None:
    got = _by_mode(BASE)
    # batch: runs every 3600 - 100 s; 100,000 rows x 0.0001 s x 86400/3500 runs, + lookups.
    batch_core = 10.0 * 86400 / 3500 + 864_000 * 0.0001
    assert got["batch-only"] == pytest.approx((batch_core, batch_core / 3600 * 0.05, 3600.0, True))
    online_core = 864_000 * 0.002
    assert got["online-only"] == pytest.approx((online_core, 0.024, 0.0, True))
    hybrid_core = 2.0 * 86400 / 3580 + 864_000 * 0.8 * 0.0001 + 864_000 * 0.2 * 0.002
    assert got["hybrid"] == pytest.approx((hybrid_core, hybrid_core / 3600 * 0.05, 3600.0, True))
    advice = advise(BASE)
    assert advice.choice == "batch-only"
    batch = next(m for m in advice.modes if m.mode == "batch-only")
    assert batch.cost_per_1k == pytest.approx(batch.cost_per_day / 864)
    assert batch.interval_s == pytest.approx(3500.0)


def test_five_minutes_makes_hybrid_cheapest() -> None:
    got = _by_mode(replace(BASE, freshness_s=300.0))
    assert got["batch-only"][0] == pytest.approx(10.0 * 86400 / 200 + 86.4)  # every 200 s
    hybrid = 2.0 * 86400 / 280 + 69.12 + 345.6  # the active fifth every 280 s
    assert got["hybrid"][0] == pytest.approx(hybrid)
    assert advise(replace(BASE, freshness_s=300.0)).choice == "hybrid"


def test_a_minute_rules_out_batch_and_leaves_online() -> None:
    inputs = replace(BASE, freshness_s=60.0)
    got = _by_mode(inputs)
    assert got["batch-only"][3] is False  # one full run takes 100 s, longer than the bound
    assert got["hybrid"][0] == pytest.approx(2.0 * 86400 / 40 + 69.12 + 345.6)  # 4,734.7
    advice = advise(inputs)
    assert advice.choice == "online-only"
    assert "online-only" in advice.why and "batch-only" in advice.why


def test_more_traffic_per_entity_favours_precomputing() -> None:
    quiet = advise(replace(BASE, requests_per_s=0.01, freshness_s=300.0))
    assert quiet.choice == "online-only"  # scoring everything often costs more than a trickle
    busy = advise(replace(BASE, requests_per_s=1000.0, freshness_s=300.0))
    # 86.4 M answers a day: computing a fifth of them now (34,560 core-s) costs more than
    # scoring every entity every 200 s (4,320 core-s) and looking every answer up (8,640).
    assert busy.choice == "batch-only"
