"""Feedback joined to the logged answers, and the quality figures: AUC, log loss, Brier,
calibration bins and precision/recall equal scikit-learn's on the same pairs; duplicates by
id count once, late feedback and feedback before its answer is logged still join."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    brier_score_loss,
    log_loss,
    mean_absolute_error,
    precision_score,
    recall_score,
    roc_auc_score,
)

from hybridserve.config import project_from_dict
from hybridserve.quality.feedback import FeedbackStore, Outcome
from hybridserve.quality.figures import figures
from hybridserve.quality.log import row
from hybridserve.quality.sinks import MemorySink
from hybridserve.records import now

RNG = np.random.default_rng(3)


def proj(tmp_path: Path, **route: Any) -> Any:
    return project_from_dict(
        {
            "entities": {"card": {"key": "card_id"}},
            "routes": {"r": {"model": "m@production", "entity": "card", **route}},
        },
        tmp_path,
    )


def answer(i: int, score: float, ts: float, version: int = 1, **kw: Any) -> dict[str, Any]:
    return row(
        ts=ts,
        route="r",
        source="online",
        entity=f"e{i}",
        model="m",
        model_version=version,
        score=score,
        request_id=f"q{i}",
        **kw,
    )


def test_figures_equal_scikit_learns_on_the_same_pairs() -> None:
    p = RNG.uniform(0, 1, 3000)
    p[:50] = 0.0  # edge scores, clipped like log_loss clips them
    p[50:100] = 1.0
    p[100:200] = 0.5  # ties
    y = (RNG.uniform(0, 1, 3000) < p * 0.8 + 0.1).astype(float)
    f = figures(p, y, threshold=0.4, bins=10)
    assert f.task == "classification" and f.n == 3000
    assert f.values["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert f.values["log_loss"] == pytest.approx(log_loss(y, p), abs=1e-12)
    assert f.values["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    cut = p >= 0.4
    assert f.values["precision"] == pytest.approx(precision_score(y, cut), abs=1e-12)
    assert f.values["recall"] == pytest.approx(recall_score(y, cut), abs=1e-12)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    assert [b["observed"] for b in f.calibration] == pytest.approx(list(prob_true), abs=1e-12)
    assert [b["mean_score"] for b in f.calibration] == pytest.approx(list(prob_pred), abs=1e-12)
    assert sum(b["count"] for b in f.calibration) == 3000


def test_regression_figures() -> None:
    y = RNG.normal(10, 3, 500)
    p = y + RNG.normal(0, 1, 500)
    f = figures(p, y)
    assert f.task == "regression"
    assert f.values["mae"] == pytest.approx(mean_absolute_error(y, p), abs=1e-12)
    assert f.values["rmse"] == pytest.approx(float(np.sqrt(np.mean((p - y) ** 2))), abs=1e-12)


def test_answers_and_feedback_give_scikit_learns_figures_per_version(tmp_path: Path) -> None:
    sink = MemorySink()
    store = FeedbackStore(proj(tmp_path, threshold=0.5), sink)
    t = now() - 600
    scores = RNG.uniform(0, 1, 400)
    labels = (RNG.uniform(0, 1, 400) < scores).astype(int)
    sink.append("predictions", "r", [answer(i, float(s), t + i) for i, s in enumerate(scores)])
    # Half by request id, half by entity and time (a second after the answer).
    outcomes = [
        Outcome(f"fb{i}", float(labels[i]), request_id=f"q{i}")
        if i % 2
        else Outcome(f"fb{i}", float(labels[i]), entity=f"e{i}", at=t + i + 1)
        for i in range(400)
    ]
    assert store.submit("r", outcomes) == (400, [])
    assert store.submit("r", outcomes[:10]) == (0, [f"fb{i}" for i in range(10)])  # retried
    by_version, joined = store.quality("r")
    assert joined.unmatched == 0 and list(by_version) == [("m", 1)]
    f = by_version[("m", 1)]
    assert f.n == 400
    assert f.values["roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert f.values["brier"] == pytest.approx(brier_score_loss(labels, scores), abs=1e-12)
    prob_true, _ = calibration_curve(labels, scores, n_bins=10)
    assert [b["observed"] for b in f.calibration] == pytest.approx(list(prob_true), abs=1e-12)


def test_late_early_duplicate_and_corrected_feedback(tmp_path: Path) -> None:
    sink = MemorySink()
    store = FeedbackStore(proj(tmp_path), sink)
    t = now() - 100
    # Feedback before its answer reached the log: unmatched now, joined once it is there.
    store.submit("r", [Outcome("a", 1.0, request_id="q1")])
    assert store.pairs("r", t - 10).unmatched == 1
    sink.append("predictions", "r", [answer(1, 0.9, t), answer(2, 0.2, t + 1, version=2)])
    joined = store.pairs("r", t - 10)
    assert [(p.feedback_id, p.value) for p in joined.pairs] == [("a", 1.0)]
    # A correction under another id: the last one received wins; a duplicate id changes nothing.
    store.submit("r", [Outcome("b", 0.0, request_id="q1"), Outcome("a", 0.0, request_id="q1")])
    joined = store.pairs("r", t - 10)
    assert [(p.feedback_id, p.value) for p in joined.pairs] == [("b", 0.0)]
    # By entity and time: the answer served then, not a later one; none too long before.
    sink.append("predictions", "r", [answer(2, 0.7, t + 50, version=2)])
    store.submit("r", [Outcome("c", 1.0, entity="e2", at=t + 10)])
    got = {p.feedback_id: p.score for p in store.pairs("r", t - 10).pairs}
    assert got["c"] == 0.2
    store.submit("r", [Outcome("d", 1.0, entity="e2", at=t + 50 + 8 * 86400)])
    assert store.pairs("r", t - 10).unmatched == 1  # more than max_join_age after any answer
