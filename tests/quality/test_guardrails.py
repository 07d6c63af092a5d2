"""The verdict on a rollout step from summed per-worker totals (``quality/rollout.judge``)."""

from __future__ import annotations

from typing import Any

import pytest

from hybridserve.config import RolloutPlan, project_from_dict
from hybridserve.errors import ConfigError, InvalidInput
from hybridserve.quality.rollout import judge, latency_bucket, merge, new_counts, parse_target
from hybridserve.registry.rollouts import Rollout

PLAN = RolloutPlan.model_validate(
    {
        "shadow": {"percent": 100, "min_time": 60, "min_answers": 20},
        "steps": [{"percent": 5, "min_time": 60, "min_answers": 10}, 100],
        "guardrails": {"min_samples": 10, "max_error_rate": 0.05, "max_p99": "100ms"},
    }
)


def rollout(step: int, started: float = 1000.0) -> Rollout:
    return Rollout(
        1, "fraud", "fraud", 2, "production", PLAN, "running", step, started, 0, "t", 0, ""
    )


def counts(answers: int, errors: int = 0, latency_s: float = 0.01, **extra: int) -> dict[str, Any]:
    c = new_counts()
    c.update(requests=answers, answers=answers, errors=errors, **extra)
    c["latency"] = {str(latency_bucket(latency_s)): answers}
    return c


def test_workers_totals_add_up() -> None:
    total = merge([counts(10, 1), counts(5, 0, latency_s=2.0, agree=3)])
    assert (total["answers"], total["errors"], total["agree"]) == (15, 1, 3)
    assert sum(total["latency"].values()) == 15


def test_a_step_waits_for_its_time_and_answers_then_advances() -> None:
    r = rollout(1)
    early = judge(r, {"candidate": [counts(4)]}, 1030.0, budget=0.05)
    assert not early.ready and not early.breaches
    assert early.waiting == ["time 30s of 60s", "answers 4 of 10"]
    ready = judge(r, {"candidate": [counts(6), counts(6)]}, 1061.0, budget=0.05)
    assert ready.ready and ready.figures["candidate"]["answers"] == 12


def test_a_breach_needs_enough_samples_and_then_rolls_back_at_once() -> None:
    r = rollout(1)
    few = judge(r, {"candidate": [counts(9, errors=9)]}, 1001.0, budget=0.05)
    assert not few.breaches  # 9 answers: below min_samples, not judged yet
    bad = judge(r, {"candidate": [counts(20, errors=2)]}, 1001.0, budget=0.05)
    assert [b.guard for b in bad.breaches] == ["error rate"] and not bad.ready
    assert bad.breaches[0].value == pytest.approx(0.1)


def test_p99_is_judged_against_the_step_limit_else_the_budget() -> None:
    slow = judge(rollout(1), {"candidate": [counts(20, latency_s=0.3)]}, 2000.0, budget=1.0)
    assert [b.guard for b in slow.breaches] == ["p99 latency (s)"]  # max_p99 is 100 ms
    plain = RolloutPlan.model_validate({"steps": [{"percent": 5, "min_time": 0, "min_answers": 0}]})
    r = Rollout(1, "fraud", "fraud", 2, "p", plain, "running", 1, 0, 0, "t", 0, "")
    assert not judge(r, {"candidate": [counts(60, latency_s=0.03)]}, 1.0, budget=0.05).breaches
    late = judge(r, {"candidate": [counts(60, latency_s=0.08)]}, 1.0, budget=0.05)
    assert [b.guard for b in late.breaches] == ["p99 latency (s)"]  # the route's budget


def test_the_shadow_step_counts_comparisons_and_judges_agreement() -> None:
    r = rollout(0)
    held = judge(r, {"candidate": [counts(0, agree=19, disagree=1)]}, 1100.0, budget=0.05)
    assert held.ready and held.figures["candidate"]["agreement"] == 0.95
    low = judge(r, {"candidate": [counts(0, agree=10, disagree=10)]}, 1100.0, budget=0.05)
    assert [b.guard for b in low.breaches] == ["agreement"]


def test_quality_and_drift_providers_are_judged_when_given() -> None:
    r = rollout(1)
    stats = {"candidate": [counts(20)]}
    worse = judge(r, stats, 1100.0, budget=1.0, quality=lambda ro, m: (0.12, 0.05, 50))
    assert [b.guard for b in worse.breaches] == ["brier drop"]
    assert worse.figures["quality"] == {
        "metric": "brier",
        "candidate": 0.12,
        "primary": 0.05,
        "labelled": 50,
    }
    unlabelled = judge(r, stats, 1100.0, budget=1.0, quality=lambda ro, m: (0.12, 0.05, 3))
    assert not unlabelled.breaches
    plan = PLAN.model_copy(
        update={"guardrails": PLAN.guardrails.model_copy(update={"max_drift": 0.2})}
    )
    drifted = Rollout(1, "fraud", "fraud", 2, "p", plan, "running", 1, 1000.0, 0, "t", 0, "")
    assert [
        b.guard for b in judge(drifted, stats, 1100.0, budget=1.0, drift=lambda ro: 0.3).breaches
    ] == ["drift psi"]


def test_targets_and_plans_are_checked() -> None:
    assert parse_target("fraud@3") == ("fraud", 3) == parse_target("fraud/3")
    for bad in ("fraud", "fraud@production", "fraud@0"):
        with pytest.raises(InvalidInput, match=r"MODEL@VERSION|versions start at 1"):
            parse_target(bad)
    with pytest.raises(ValueError, match="rising"):
        RolloutPlan.model_validate({"steps": [50, 25]})


def test_a_review_rule_names_route_features_only() -> None:
    raw = {
        "entities": {"card": {"key": "card_id"}},
        "feature_views": {"v": {"entity": "card", "features": {"a": "float"}}},
        "routes": {
            "r": {
                "model": "m@production",
                "entity": "card",
                "features": ["v"],
                "review": {"when": ["missing_critical_features"], "critical_features": ["b"]},
            }
        },
    }
    with pytest.raises(ConfigError, match="critical_features: 'b' is not one of the route"):
        project_from_dict(raw)
    raw["routes"]["r"]["review"] = {"when": ["missing_critical_features"]}
    with pytest.raises(ConfigError, match="needs some"):
        project_from_dict(raw)
    raw["routes"]["r"]["review"] = {"when": [{"score_between": [0.6, 0.4]}]}
    with pytest.raises(ConfigError, match="low <= high"):
        project_from_dict(raw)
