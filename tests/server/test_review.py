"""Abstention: answers a route's review rule matches say ``decision: review``, land in the
review queue with their context, and are worked through the admin endpoints and the CLI."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli_run import Ran
from cli_run import hs as run_cli
from hybridserve.config import ReviewConfig
from hybridserve.quality.review import ReviewQueue, ReviewRule
from hybridserve.runtimes.base import Prediction
from hybridserve.scoring import Matrix
from model_fakes import PredictFn, swap_predict

ROUTE = "fraud"
CARDS = [f"card_{i:06d}" for i in range(400)]
BAND = (0.4, 0.6)
REVIEW = {
    "when": [{"score_between": list(BAND)}, "degraded", "missing_critical_features"],
    "critical_features": ["cardholder_age_years"],
    "queue": "fraud-analysts",
}
Serve = Callable[..., Any]
MakeProject = Callable[..., Any]


async def metric(client: Any, name: str, **labels: str) -> float:
    text = (await client.get("/metrics")).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def test_the_rule_names_each_condition_an_answer_meets() -> None:
    rule = ReviewRule(ReviewConfig.model_validate(REVIEW), ROUTE)
    assert rule.queue == "fraud-analysts"
    assert rule.reasons(0.5, False, {"cardholder_age_years": 40}) == ["score_between:0.4-0.6"]
    assert rule.reasons(0.4, True, None) == ["score_between:0.4-0.6", "degraded"]
    assert rule.reasons(0.61, False, {"cardholder_age_years": None}) == [
        "missing_critical_features"
    ]
    assert rule.reasons(0.1, False, {}) == ["missing_critical_features"]
    assert rule.reasons(0.1, False, None) == []  # a stored answer: its features were not read
    assert rule.reasons(None, True, None) == ["degraded"]


async def test_abstained_answers_land_in_the_queue_with_their_context(
    make_project: MakeProject, serve: Serve
) -> None:
    project = make_project(latency_budget="5s", review=REVIEW)
    app, client = await serve(project)
    state = app.state
    rows = await state.services.features.read_route(ROUTE, CARDS)
    missing = {
        c
        for c, row in zip(CARDS, rows, strict=True)
        if row.plain().get("cardholder_age_years") is None
    }
    assert missing, "the example data has cards without an age"
    expected: dict[str, list[str]] = {}
    requests: dict[str, str] = {}
    for start in range(0, len(CARDS), 50):
        r = await client.post(
            f"/v1/predict/{ROUTE}", json={"entities": CARDS[start : start + 50], "mode": "compute"}
        )
        assert r.status_code == 200, r.text
        for p in r.json()["predictions"]:
            reasons = []
            if BAND[0] <= p["score"] <= BAND[1]:
                reasons.append("score_between:0.4-0.6")
            if p["entity"] in missing:
                reasons.append("missing_critical_features")
            assert p.get("decision") == ("review" if reasons else None), p
            assert not p["degraded"]
            if reasons:
                expected[p["entity"]] = reasons
                requests[p["entity"]] = r.json()["request_id"]
    await state.reviews.flush()
    listed = await client.get("/v1/admin/review", params={"route": ROUTE, "limit": 1000})
    assert listed.status_code == 200, listed.text
    cases = listed.json()["cases"]
    assert {c["entity"]: c["reasons"] for c in cases} == expected
    for c in cases:
        assert (c["queue"], c["status"], c["model"], c["model_version"]) == (
            "fraud-analysts",
            "open",
            "fraud",
            1,
        )
        assert c["request_id"] == requests[c["entity"]] and c["source"] == "online"
        assert len(c["context"]["features"]) == 30 and c["context"]["routed_to"] == "fraud/1"
    n_missing = await metric(
        client, "hybridserve_review_total", route=ROUTE, reason="missing_critical_features"
    )
    assert n_missing == len(missing)
    await state.reviews.flush()

    # A streamed answer is judged before it is sent.
    one = sorted(missing)[0]
    r = await client.post(
        f"/v1/predict/{ROUTE}",
        json={"entities": [one], "mode": "compute"},
        headers={"accept": "application/x-ndjson"},
    )
    line, summary = (orjson.loads(x) for x in r.text.splitlines())
    assert (line["entity"], line["decision"]) == (one, "review") and summary["summary"]

    # A degraded answer (the primary fails, the fallback model answers) goes to review too.
    primary = state.models.get(ROUTE)
    assert primary is not None

    def failing(inner: PredictFn) -> PredictFn:
        def fail(matrix: Matrix) -> Prediction:
            raise RuntimeError("down")

        return fail

    swap_predict(primary.batcher, failing)
    healthy = next(c for c in CARDS if c not in expected)
    r = await client.post(f"/v1/predict/{ROUTE}", json={"entity": healthy, "mode": "compute"})
    (p,) = r.json()["predictions"]
    assert p["degraded"] and p["decision"] == "review" and p["source"].startswith("fallback:")
    await state.reviews.flush()
    (case,) = (await client.get("/v1/admin/review", params={"route": ROUTE, "limit": 1})).json()[
        "cases"
    ]
    assert case["entity"] == healthy and "degraded" in case["reasons"]
    assert any("compute: failed" in step for step in case["context"]["steps"])

    # Resolving: once with a label, again with the same is a no-op, another is a conflict.
    url = f"/v1/admin/review/{case['id']}"
    r = await client.post(url + "/resolve", json={"label": 1, "note": "confirmed by phone"})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["label"], r.json()["resolved_by"][:10]) == (
        "resolved",
        1.0,
        "anonymous@",
    )
    assert (await client.post(url + "/resolve", json={"label": 1})).status_code == 200
    assert (await client.post(url + "/resolve", json={"label": 0})).status_code == 409
    assert (await client.get(url)).json()["note"] == "confirmed by phone"
    assert (await client.get("/v1/admin/review/999999")).status_code == 404
    assert (await client.get("/v1/admin/review/x")).status_code == 404
    assert (await client.post(url + "/resolve", json={"label": "1"})).status_code == 400
    bad = await client.get("/v1/admin/review", params={"status": "done"})
    assert bad.status_code == 400 and "status" in bad.json()["error"]
    # The resolved label is what feedback reads, by request id and entity.
    (label,) = ReviewQueue(state.services.registry.engine).labels(ROUTE)
    assert (label.request_id, label.entity, label.label) == (r.json()["request_id"], healthy, 1.0)
    # ...and it already went to the route's feedback: sending it again is a duplicate.
    from hybridserve.quality.feedback import Outcome

    again = state.feedback.submit(ROUTE, [Outcome(f"review:{case['id']}", 1.0)])
    assert again == (0, [f"review:{case['id']}"])


def test_the_review_commands_list_show_and_resolve(
    make_project: MakeProject, capsys: pytest.CaptureFixture[str]
) -> None:
    project = make_project(review=REVIEW)
    from hybridserve.quality.review import ReviewCase
    from hybridserve.registry import Registry

    with Registry.from_project(project) as registry:
        ReviewQueue(registry.engine).add_many(
            [
                ReviewCase(
                    "fraud-analysts",
                    ROUTE,
                    "req-1",
                    "card_000007",
                    0.45,
                    "fraud",
                    1,
                    "online",
                    False,
                    ["score_between:0.4-0.6"],
                    {"steps": []},
                )
            ]
        )

    def hs(*args: str) -> Ran:
        return run_cli(capsys, *args, "-p", str(project.base_dir))

    listed = hs("review", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (case,) = orjson.loads(listed.stdout)
    assert case["entity"] == "card_000007"
    shown = hs("review", "show", str(case["id"]))
    assert shown.returncode == 0 and "score_between:0.4-0.6" in shown.stdout
    done = hs("review", "resolve", str(case["id"]), "--label", "0", "--json")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["status"] == "resolved"
    again = hs("review", "resolve", str(case["id"]), "--label", "1")
    assert again.returncode != 0 and "already resolved" in again.stderr
    assert orjson.loads(hs("review", "list", "--json").stdout) == []
