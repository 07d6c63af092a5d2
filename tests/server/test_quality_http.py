"""``POST /v1/feedback/{route}`` on the trained fraud project: answers logged, outcomes sent
by request id and by entity, figures and drift in ``/metrics``, retries idempotent."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from hybridserve.quality.export import export_all

pytestmark = pytest.mark.slow


async def test_feedback_joins_logged_answers_and_shows_in_metrics(
    make_project: Any, serve: Any
) -> None:
    project = make_project(
        {"prediction_log": {"rotate_interval": "1h"}},
        log={"online": 1.0},
        drift={"min_samples": 20},
        latency_budget="30s",  # computed on a busy machine too, not answered by a fallback
    )
    app, client = await serve(project)
    cards = [f"card_{i:06d}" for i in range(1, 61)]
    got = await client.post("/v1/predict/fraud", json={"entities": cards, "mode": "compute"})
    assert got.status_code == 200
    body = got.json()
    scores = {p["entity"]: p["score"] for p in body["predictions"]}
    state = app.state
    assert state.services.prediction_log.flush()
    rng = np.random.default_rng(1)
    labels = {c: int(rng.uniform() < scores[c]) for c in cards}
    labels[cards[0]], labels[cards[1]] = 1, 0  # both classes present
    items = [
        {"id": f"fb-{c}", "value": labels[c], "request_id": body["request_id"], "entity": c}
        if i % 2
        else {"id": f"fb-{c}", "value": bool(labels[c]), "entity": c}
        for i, c in enumerate(cards)
    ]
    sent = await client.post("/v1/feedback/fraud", json={"feedback": items})
    assert sent.status_code == 202 and sent.json() == {
        "route": "fraud",
        "accepted": 60,
        "duplicates": [],
    }
    again = await client.post("/v1/feedback/fraud", json={"feedback": items[:2]})
    assert again.json()["accepted"] == 0 and len(again.json()["duplicates"]) == 2
    bad = await client.post("/v1/feedback/fraud", json={"feedback": [{"id": "x", "value": 1}]})
    assert bad.status_code == 400 and "request_id" in bad.json()["error"]
    assert (await client.post("/v1/feedback/nope", json={"feedback": items})).status_code == 404

    export_all(state.metrics, state.feedback, state.drift)
    text = (await client.get("/metrics")).text
    y = [labels[c] for c in cards]
    p = [scores[c] for c in cards]
    auc = _sample(text, 'hybridserve_quality{figure="roc_auc",model="fraud",route="fraud"')
    assert auc == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    brier = _sample(text, 'hybridserve_quality{figure="brier",model="fraud",route="fraud"')
    assert brier == pytest.approx(brier_score_loss(y, p), abs=1e-9)
    assert 'hybridserve_feedback_total{outcome="duplicate",route="fraud"} 2.0' in text
    # Drift of the answers against the trained version's reference: judged, per feature.
    assert 'hybridserve_drift_psi{feature="amount_mean_30d",route="fraud"}' in text


def _sample(text: str, prefix: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith(prefix))
    return float(line.rsplit(" ", 1)[1])


async def test_a_shifted_feature_in_the_traffic_drifts_alone(make_project: Any, serve: Any) -> None:
    import pyarrow.parquet as pq

    project = make_project(
        log={"online": 1.0}, drift={"min_samples": 100, "psi": 0.25}, latency_budget="30s"
    )
    app, client = await serve(project)
    state = app.state
    cards = pq.read_table(project.path("data/card_profile.parquet")).to_pylist()
    names = list(project.view("card_profile").features)
    t = cards[0]["event_time"].timestamp()
    rows = [
        (
            c["card_id"],
            {**{n: c[n] for n in names}, "utilization": c["utilization"] * 3 + 1},
            max(t, c["event_time"].timestamp()) + 1,
        )
        for c in cards
    ]
    await state.services.features.write("card_profile", rows)
    keys = [c["card_id"] for c in cards]
    got = await client.post("/v1/predict/fraud", json={"entities": keys, "mode": "compute"})
    assert got.status_code == 200
    assert {p["source"] for p in got.json()["predictions"]} == {"online"}
    report = state.drift.report("fraud", fresh=True)
    assert report.judged and report.n == len(keys)
    assert [f.name for f in report.features if f.drifted] == ["utilization"]
    assert all(f.psi < 0.25 for f in report.features if f.name != "utilization")
    reasons = state.drift.reasons()["fraud"]
    assert reasons[0].startswith("feature utilization: PSI")
    export_all(state.metrics, state.feedback, state.drift)
    text = (await client.get("/metrics")).text
    assert 'hybridserve_drifted{feature="utilization",route="fraud"} 1.0' in text
    assert 'hybridserve_drifted{feature="amount_mean_30d",route="fraud"} 0.0' in text
    health = (await client.get("/v1/health")).json()
    assert health["status"] == "degraded"
    assert any(
        r.startswith("drift:fraud degraded: feature utilization: PSI") for r in health["reasons"]
    )
    assert not any("amount_mean_30d" in r for r in health["reasons"])
    # The route itself is degraded, saying why.
    route = next(c for c in health["components"] if c["name"] == "route:fraud")
    assert route["status"] == "degraded"
    assert any(r.startswith("drift: feature utilization: PSI") for r in route["reasons"])
