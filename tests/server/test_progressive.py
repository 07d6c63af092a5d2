"""Guarded progressive rollouts: two serving processes (in process, sharing the project's
registry database) follow a rollout's steps, and a controller on a fake clock advances,
promotes or rolls it back from both workers' figures.

Version 2 of ``fraud`` is version 1's artifact registered again (``fraud_versions``): a good
candidate agrees with the primary on every score. A bad one is made so by swapping its model
call (``model_fakes.swap_predict``): one that fails, one whose scores are flipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from fraud_versions import add_fraud_version_offline
from hybridserve.config import Project
from hybridserve.quality.rollout import RolloutController, command, start_rollout
from hybridserve.registry import Registry
from hybridserve.registry.rollouts import Rollouts
from hybridserve.routing.rollout import in_share
from hybridserve.runtimes.base import Prediction
from hybridserve.scoring import Matrix
from hybridserve.server.app import HybridApp
from hybridserve.server.state import ServerState
from model_fakes import PredictFn, swap_predict

ROUTE = "fraud"
CARDS = [f"card_{i:06d}" for i in range(400)]
Serve = Callable[[Project], Any]
MakeProject = Callable[..., Project]
STEP = {"min_time": "1m", "min_answers": 10}
GUARDS = {
    "min_samples": 10,
    "max_error_rate": 0.05,
    "max_degraded_share": 0.2,
    "min_agreement": 0.9,
    "max_p99": "30s",  # a busy test machine is not what these tests judge
}


def plan(shadow: bool = True) -> dict[str, Any]:
    return {
        "shadow": {"percent": 100, **STEP} if shadow else None,
        "steps": [{"percent": p, **STEP} for p in (5, 25, 50, 100)],
        "guardrails": GUARDS,
    }


class Clock:
    def __init__(self) -> None:
        self.t = 1_900_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def registry(make_project: MakeProject) -> Iterator[Registry]:
    reg = Registry.from_project(make_project())
    yield reg
    reg.close()


async def _workers(
    make_project: MakeProject, serve: Serve, shadow: bool = True
) -> tuple[Project, list[tuple[ServerState, httpx.AsyncClient]]]:
    # No background polls: the test moves every process itself, so nothing depends on timing.
    project = make_project(
        {"server": {"reload_interval": 0}}, latency_budget="5s", rollout=plan(shadow)
    )
    assert add_fraud_version_offline(project) == 2
    workers = []
    for _ in range(2):
        app: HybridApp
        app, client = await serve(project)
        workers.append((app.state, client))
    return project, workers


async def _traffic(workers: list[tuple[ServerState, httpx.AsyncClient]]) -> None:
    """Every card once through each worker, computed now, then the per-arm totals written."""
    for state, client in workers:
        for start in range(0, len(CARDS), 25):
            r = await client.post(
                f"/v1/predict/{ROUTE}",
                json={"entities": CARDS[start : start + 25], "mode": "compute"},
            )
            assert r.status_code == 200, r.text
        await state.router.flush()
    for state, _ in workers:
        await state.rollouts.sync()


async def _follow(workers: list[tuple[ServerState, httpx.AsyncClient]]) -> None:
    for state, _ in workers:
        await state.rollouts.sync()


def _moves(registry: Registry, rollout_id: int) -> list[Any]:
    entries = registry.audit("fraud", limit=500)
    return [
        e
        for e in reversed(entries)
        if e.action.startswith("rollout_") and e.details.get("rollout") == rollout_id
    ]


def _share(percent: float, salt: str = ROUTE) -> int:
    return sum(in_share(c, percent, salt) for c in CARDS)


async def test_a_good_candidate_advances_step_by_step_and_is_promoted(
    make_project: MakeProject, serve: Serve, registry: Registry
) -> None:
    project, workers = await _workers(make_project, serve)
    clock = Clock()
    controller = RolloutController(registry, {ROUTE: 5.0}, owner="test", clock=clock)
    rollout = start_rollout(registry, project, "fraud@2", actor="tests", clock=clock)
    await _follow(workers)
    expected = [("shadow", 0.0), ("canary", 5.0), ("canary", 25.0), ("canary", 50.0)]
    expected.append(("canary", 100.0))
    for step, (kind, percent) in enumerate(expected):
        for state, _ in workers:  # both workers follow the step
            arm = state.router.splits.rollouts[ROUTE]
            assert (arm.step, arm.canary_percent, arm.model.label) == (step, percent, "fraud/2")
            assert state.router.splits.shadow(ROUTE)[1] == (100.0 if percent < 100 else 0.0)
        await _traffic(workers)
        assert controller.tick() == []  # the guardrails hold, but the step's minute has not passed
        clock.t += 61
        (line,) = controller.tick()
        await _follow(workers)
        entry = _moves(registry, rollout.id)[-1]
        cand, prim = entry.details["figures"]["candidate"], entry.details["figures"]["primary"]
        # Figures of both workers: every card asked twice.
        assert cand["answers"] == 2 * _share(percent), (step, entry.details)
        assert prim["answers"] == 2 * (len(CARDS) - _share(percent))
        assert cand["error_rate"] in (0.0, None) and cand["degraded_share"] in (0.0, None)
        if percent < 100:  # the primary's answers are shadowed on the candidate, all agree
            assert cand["comparisons"] == prim["answers"] and cand["agreement"] == 1.0
        assert entry.details["stage"] == kind and entry.details["percent"] == (percent or 100)
        assert entry.action == ("rollout_promote" if step == len(expected) - 1 else "rollout_step")
        assert "promoted" in line or "held" in line
    assert Rollouts(registry).get(rollout.id).state == "promoted"
    assert registry.aliases("fraud")["production"] == 2
    actions = [e.action for e in _moves(registry, rollout.id)]
    assert actions == ["rollout_start", *["rollout_step"] * 4, "rollout_promote"]
    for state, client in workers:  # the rollout is over: version 2 is everyone's primary
        assert ROUTE not in state.router.splits.rollouts
        r = await client.post(f"/v1/predict/{ROUTE}", json={"entity": CARDS[0], "mode": "compute"})
        assert r.json()["predictions"][0]["model_version"] == 2


def _failing(inner: PredictFn) -> PredictFn:
    def fail(matrix: Matrix) -> Prediction:
        raise RuntimeError("the candidate is broken")

    return fail


def _flipped(inner: PredictFn) -> PredictFn:
    def flip(matrix: Matrix) -> Prediction:
        p = inner(matrix)
        probabilities = None if p.probabilities is None else p.probabilities[:, ::-1].copy()
        return Prediction(np.asarray(1.0 - p.scores), probabilities, p.classes)

    return flip


@pytest.mark.parametrize(
    ("wrap", "shadow", "guard", "breached_at"),
    [
        (_failing, False, "error rate", ("canary", 5.0)),
        (_flipped, True, "agreement", ("shadow", 100)),
    ],
    ids=["higher-error-rate", "lower-agreement"],
)
async def test_a_bad_candidate_is_rolled_back_at_the_first_breached_step(
    make_project: MakeProject,
    serve: Serve,
    registry: Registry,
    wrap: Callable[[PredictFn], PredictFn],
    shadow: bool,
    guard: str,
    breached_at: tuple[str, float],
) -> None:
    project, workers = await _workers(make_project, serve, shadow=shadow)
    clock = Clock()
    controller = RolloutController(registry, {ROUTE: 5.0}, owner="test", clock=clock)
    rollout = start_rollout(registry, project, "fraud@2", actor="tests", clock=clock)
    await _follow(workers)
    for state, _ in workers:
        candidate = state.models.get(ROUTE, "rollout")
        assert candidate is not None and candidate.label == "fraud/2"
        swap_predict(candidate.batcher, wrap)
    await _traffic(workers)
    # A breach needs no waiting: rolled back at once, before the step's minute is over.
    (line,) = controller.tick()
    assert "rolled back" in line and guard in line
    await _follow(workers)
    done = Rollouts(registry).get(rollout.id)
    assert (done.state, done.step) == ("rolled_back", 0)
    entry = _moves(registry, rollout.id)[-1]
    assert entry.action == "rollout_rollback"
    (breach,) = [b for b in entry.details["breaches"] if b["guard"] == guard]
    figures = entry.details["figures"]["candidate"]
    if guard == "error rate":
        assert breach["value"] == figures["error_rate"] == 1.0 and breach["limit"] == 0.05
        assert figures["answers"] == 2 * _share(5)
    else:
        assert breach["value"] == figures["agreement"] < 0.9 and breach["limit"] == 0.9
        assert figures["comparisons"] == 2 * len(CARDS)
    assert (entry.details["stage"], entry.details["percent"]) == breached_at
    assert registry.aliases("fraud")["production"] == 1  # nothing promoted
    for state, client in workers:  # every worker is back on the primary alone
        assert ROUTE not in state.router.splits.rollouts
        assert state.models.get(ROUTE, "rollout") is None
        r = await client.post(
            f"/v1/predict/{ROUTE}", json={"entities": CARDS[:50], "mode": "compute"}
        )
        assert {p["model_version"] for p in r.json()["predictions"]} == {1}


async def test_pause_holds_a_step_and_abort_ends_the_rollout_audited(
    make_project: MakeProject, serve: Serve, registry: Registry
) -> None:
    project, workers = await _workers(make_project, serve, shadow=False)
    clock = Clock()
    controller = RolloutController(registry, {ROUTE: 5.0}, owner="test", clock=clock)
    rollout = start_rollout(registry, project, "fraud@2", actor="tests", clock=clock)
    await _follow(workers)
    command(registry, "fraud@2", "pause", actor="ops")
    await _traffic(workers)
    clock.t += 3600
    assert controller.tick() == []  # paused: not judged, not advanced
    r = await workers[1][1].get("/v1/admin/rollouts")  # what one worker says of both
    (seen,) = r.json()["rollouts"]
    assert (seen["id"], seen["state"], seen["canary_percent"]) == (rollout.id, "paused", 5.0)
    assert seen["figures"]["candidate"]["answers"] == 2 * _share(5)
    assert [m["action"] for m in seen["moves"]] == ["rollout_start", "rollout_pause"]
    await _follow(workers)
    for state, _ in workers:  # still split at the paused step
        assert state.router.splits.rollouts[ROUTE].canary_percent == 5.0
    command(registry, "fraud@2", "abort", actor="ops")
    await _follow(workers)
    for state, _ in workers:
        assert ROUTE not in state.router.splits.rollouts
    actions = [(e.action, e.actor) for e in _moves(registry, rollout.id)]
    assert actions == [
        ("rollout_start", "tests"),
        ("rollout_pause", "ops"),
        ("rollout_abort", "ops"),
    ]
    assert registry.aliases("fraud")["production"] == 1


async def test_a_process_started_mid_rollout_follows_it_from_its_first_request(
    make_project: MakeProject, serve: Serve, registry: Registry
) -> None:
    project = make_project(
        {"server": {"reload_interval": 0}}, latency_budget="5s", rollout=plan(shadow=False)
    )
    add_fraud_version_offline(project)
    start_rollout(registry, project, "fraud@2", actor="tests")
    _, client = await serve(project)  # started (or restarted) while the rollout is at 5 %
    got = {}
    for start in range(0, len(CARDS), 50):
        r = await client.post(
            f"/v1/predict/{ROUTE}", json={"entities": CARDS[start : start + 50], "mode": "compute"}
        )
        got.update({p["entity"]: p["model_version"] for p in r.json()["predictions"]})
    assert got == {c: 2 if in_share(c, 5, ROUTE) else 1 for c in CARDS}
    assert 5 <= sum(v == 2 for v in got.values()) <= 40


def test_a_second_controller_waits_for_the_lease(
    registry: Registry, make_project: MakeProject
) -> None:
    project = make_project(rollout=plan(shadow=False))
    add_fraud_version_offline(project)
    rollout = start_rollout(registry, project, "fraud@2", actor="tests")
    rollouts = Rollouts(registry)
    assert rollouts.lease(rollout.id, "a", 30)
    assert not rollouts.lease(rollout.id, "b", 30)
    assert rollouts.lease(rollout.id, "a", 30)  # the holder renews
