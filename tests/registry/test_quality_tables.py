"""The rollout and review-queue tables on every metadata backend (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridserve.config import RolloutPlan
from hybridserve.errors import Conflict, NotFound
from hybridserve.quality.review import ReviewCase, ReviewQueue
from hybridserve.registry import Registry
from hybridserve.registry.rollouts import Rollouts

PLAN = RolloutPlan.model_validate({"shadow": None, "steps": [{"percent": 10}, 100]})


def _two_versions(registry: Registry, model_file: Path) -> None:
    for _ in range(2):
        registry.register("fraud", model_file, features=["a", "b", "c"])
    registry.promote("fraud", 1, actor="tests")


def test_a_rollout_moves_once_per_step_and_promotes_in_one_transaction(
    registry: Registry, model_file: Path
) -> None:
    _two_versions(registry, model_file)
    rollouts = Rollouts(registry)
    started = rollouts.start("fraud", "fraud", 2, "production", PLAN, actor="tests")
    with pytest.raises(Conflict, match="already has rollout"):
        rollouts.start("fraud", "fraud", 2, "production", PLAN, actor="tests")
    assert [r.id for r in rollouts.active()] == [started.id]
    rollouts.put_stats("w1", [(started.id, 0, "candidate", {"answers": 3})])
    rollouts.put_stats("w2", [(started.id, 0, "candidate", {"answers": 4})])
    rollouts.put_stats("w1", [(started.id, 0, "candidate", {"answers": 5})])  # replaces w1's
    assert sorted(c["answers"] for c in rollouts.stats(started.id, 0)["candidate"]) == [4, 5]
    assert rollouts.lease(started.id, "a", 30) and not rollouts.lease(started.id, "b", 30)

    moved = rollouts.move(started, "rollout_step", actor="c", step=1, details={"x": 1})
    assert (moved.step, moved.canary_percent) == (1, 100.0)
    with pytest.raises(Conflict, match="not running at step 0"):
        rollouts.move(started, "rollout_step", actor="c", step=1)  # judged from a stale read
    done = rollouts.move(moved, "rollout_promote", actor="c", state="promoted")
    assert done.state == "promoted" and rollouts.active() == []
    assert registry.aliases("fraud")["production"] == 2
    actions = [(e.action, e.from_version, e.to_version) for e in registry.audit("fraud", 4)]
    assert actions[:3] == [("rollout_promote", 1, 2), ("promote", 1, 2), ("rollout_step", 1, 2)]
    assert registry.rollback("fraud") == 1  # a promote by a rollout rolls back like any other


def test_review_cases_are_listed_resolved_once_and_read_as_labels(registry: Registry) -> None:
    queue = ReviewQueue(registry.engine)
    case = ReviewCase(
        *("q", "fraud", "req-1", "card_1", 0.5, "fraud", 1, "online", False),
        *(["score_between:0.4-0.6"], {"features": {"a": None}, "steps": ["store: miss"]}),
    )
    queue.add_many([case, ReviewCase(**{**case.to_json(), "id": None, "entity": "card_2"})])
    listed = queue.cases(route="fraud")
    assert [c.entity for c in listed] == ["card_2", "card_1"]
    first = listed[1]
    assert first.context == {"features": {"a": None}, "steps": ["store: miss"]}
    resolved = queue.resolve(first.id or 0, 1.0, actor="ana", note="called")
    assert (resolved.status, resolved.label, resolved.resolved_by) == ("resolved", 1.0, "ana")
    assert queue.resolve(first.id or 0, 1.0, actor="bo").resolved_by == "ana"  # same label: no-op
    with pytest.raises(Conflict, match="already resolved with label 1 by ana"):
        queue.resolve(first.id or 0, 0.0, actor="bo")
    with pytest.raises(NotFound):
        queue.resolve(987654, 1.0, actor="bo")
    assert [c.entity for c in queue.cases(status="open")] == ["card_2"]
    (label,) = queue.labels("fraud")
    assert (label.request_id, label.entity, label.label) == ("req-1", "card_1", 1.0)
    assert label.outcome() == {
        "id": f"review:{first.id}",
        "value": 1.0,
        "request_id": "req-1",
        "entity": "card_1",
        "at": first.created_at,
    }
    assert queue.labels("fraud", since=label.resolved_at or 0) == []
