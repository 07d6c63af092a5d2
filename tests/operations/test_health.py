"""``GET /v1/health``: the rules, on an in-process server over the embedded (SQLite) stores."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import yaml
from typer.testing import CliRunner

from conftest_server import without
from hybridserve.batch.manifest import RunManifest, job_dir
from hybridserve.cli import app as cli
from hybridserve.config import Project, load_project
from hybridserve.operations import checks as builtin
from hybridserve.operations.health import Checks, Component, HealthContext, Status
from hybridserve.operations.report import health_report
from hybridserve.records import now
from hybridserve.routing.router import Router
from hybridserve.storage.base import Entry

MakeProject = Callable[..., Project]
Serve = Callable[..., Any]
QUIET = {"health": {"min_answers": 5, "publish_interval": "0.2s"}}


def quiet(make_project: MakeProject, **route: Any) -> Project:
    """The fraud project without its stream and batch job (whose health is tested apart)."""
    route.setdefault("latency_budget", "2s")  # met on a busy machine: no answer falls back
    return without(make_project(QUIET, **route), "streams", "batch_jobs")


def _open(router: Router, name: str) -> None:
    breaker = router.breaker(name)
    for _ in range(20):
        breaker.failure()
    assert breaker.state == "open"


async def _health(client: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    r = await client.get("/v1/health")
    return r.status_code, r.json()


def _component(body: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in body["components"] if c["name"] == name)


async def test_healthy_then_degraded_by_an_open_breaker_with_a_fallback(
    make_project: MakeProject, serve: Serve
) -> None:
    app, client = await serve(quiet(make_project))
    for i in range(10):
        r = await client.post("/v1/predict/fraud", json={"entity": f"card_{i:06d}"})
        assert r.status_code == 200
    status, body = await _health(client)
    assert (status, body["status"], body["reasons"]) == (200, "healthy", [])
    names = {c["name"] for c in body["components"]}
    assert {"route:fraud", "prediction_store", "feature_store"} <= names
    assert any(n.startswith("model:fraud/") for n in names)
    assert body["processes"] == 1
    route = _component(body, "route:fraud")
    assert route["details"]["recent"]["answers"] == 10
    assert route["details"]["cost_last_hour"]["currency"] == "USD"
    # ``hybridserve status`` reads the heartbeat the server published to the store.
    await asyncio.sleep(0.5)
    assert app.state.project.source_file is not None
    args = ["status", "-p", str(app.state.project.source_file)]
    done = await asyncio.to_thread(CliRunner().invoke, cli, args)
    assert done.exit_code == 0, done.output
    assert "service: healthy  (1 processes)" in done.output
    assert "cost per 1k predictions (last hour)" in done.output

    _open(app.state.router, "feature_store")
    status, body = await _health(client)
    assert (status, body["status"]) == (200, "degraded")
    route = _component(body, "route:fraud")
    assert route["status"] == "degraded"
    assert route["reasons"] == ["feature_store circuit open in 1 of 1 processes"]
    assert "fallback:default" in route["details"]["answerable_by"]
    assert (await client.get("/v2/health/ready")).status_code == 200


async def test_critical_when_no_step_can_answer_and_ready_turns_false(
    make_project: MakeProject, serve: Serve
) -> None:
    app, client = await serve(quiet(make_project, fallback=["stale_prediction"]))
    assert (await client.get("/v2/health/ready")).status_code == 200
    _open(app.state.router, "feature_store")
    assert (await _health(client))[1]["status"] == "degraded"  # stored answers still come
    _open(app.state.router, "prediction_store")
    status, body = await _health(client)
    assert (status, body["status"]) == (503, "critical")
    route = _component(body, "route:fraud")
    assert route["status"] == "critical"
    assert route["details"]["answerable_by"] == []
    assert any("no step can answer" in r for r in route["reasons"])
    assert "prediction_store circuit open in 1 of 1 processes" in route["reasons"]
    assert _component(body, "prediction_store")["status"] == "degraded"
    r = await client.get("/v2/health/ready")
    assert (r.status_code, r.json()) == (503, {"ready": False})


async def test_a_high_share_of_degraded_answers_is_degraded(
    make_project: MakeProject, serve: Serve
) -> None:
    _, client = await serve(quiet(make_project, fallback=[{"default": 0.0}]))
    for i in range(8):  # never stored: the stored-only request falls back to the default
        r = await client.post("/v1/predict/fraud", json={"entity": f"card_{300 + i:06d}",
                                                          "mode": "stored"})  # fmt: skip
        assert r.json()["predictions"][0]["source"] == "fallback:default"
    _, body = await _health(client)
    route = _component(body, "route:fraud")
    assert route["status"] == "degraded"
    assert route["reasons"] == [
        "100.0% of 8 answers in the last 300s degraded or unanswered (above 5.0%)"
    ]


async def test_a_new_check_is_one_function_and_one_registration(
    make_project: MakeProject, serve: Serve
) -> None:
    app, _ = await serve(quiet(make_project))

    async def drift(ctx: HealthContext) -> list[Component]:
        return [Component("drift:fraud", "drift", Status.DEGRADED, ["score PSI 0.31 > 0.2"])]

    checks = Checks()
    checks.register(builtin.routes)
    checks.register(drift)
    report = await health_report(app.state.services, own=app.state.publisher.view(),
                                 checks=checks)  # fmt: skip
    assert [c.name for c in report.components] == [
        "route:fraud",
        "route:fraud_windows",
        "drift:fraud",
    ]
    assert report.status is Status.DEGRADED
    assert report.reasons == ["drift:fraud degraded: score PSI 0.31 > 0.2"]


async def test_a_stream_without_a_live_consumer_is_degraded(
    make_project: MakeProject, serve: Serve
) -> None:
    project = without(make_project(QUIET), "batch_jobs")
    assert project.source_file is not None
    raw = yaml.safe_load(project.source_file.read_text())
    raw["streams"]["transactions"]["source"] = {"kind": "memory"}
    project.source_file.write_text(yaml.safe_dump(raw))
    app, client = await serve(load_project(project.source_file, env=False))
    _, body = await _health(client)
    stream = _component(body, "stream:transactions")
    assert stream["status"] == "degraded"
    assert stream["reasons"] == ["no consumer alive (none reported in 30s)"]
    assert body["status"] == "degraded"
    # A consumer publishes its stats (as ``StreamConsumer`` does every few seconds).
    stats = orjson.dumps({"consumer": "c1", "events_per_s": 5.0, "updated_at": now()})
    await app.state.services.online_kv.put_many([Entry("sx:transactions:c1", stats, now())])
    _, body = await _health(client)
    stream = _component(body, "stream:transactions")
    assert (stream["status"], stream["details"]["consumers"]) == ("healthy", 1)
    assert body["status"] == "healthy"


async def test_batch_jobs_scheduled_but_not_run_or_failed_are_degraded(
    make_project: MakeProject, serve: Serve
) -> None:
    project = without(make_project(QUIET), "streams")
    (job,) = project.batch_jobs
    assert project.batch_jobs[job].schedule is not None
    _, client = await serve(project)
    _, body = await _health(client)
    c = _component(body, f"batch_job:{job}")
    assert (c["status"], c["reasons"]) == (
        "degraded", [f"no completed run (schedule {project.batch_jobs[job].schedule!r})"]
    )  # fmt: skip
    t = now()
    for run_id, status, started, error in [
        ("r1", "completed", t - 60, None),
        ("r2", "failed", t - 5, "too many rejected rows"),
    ]:
        run_dir = job_dir(project, job) / run_id
        run_dir.mkdir(parents=True)
        RunManifest(run_id, job, "fraud", "fraud", 1, "f", {}, t, 10, 10, 1, "local",
                    status=status, started_at=started, finished_at=started + 10, error=error,
                    dir=str(run_dir)).save()  # fmt: skip
    _, body = await _health(client)
    c = _component(body, f"batch_job:{job}")
    assert c["reasons"] == ["last run r2 failed: too many rejected rows"]
    assert c["details"]["last_completed"] == "r1"
