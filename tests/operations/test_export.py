"""``hybridserve export prometheus-rules`` passes ``promtool check rules``; ``export grafana``
has a row of panels per route, on the metric names the server exports."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hybridserve.config import Project
from hybridserve.observability.metrics import Metrics, RouteMetrics
from hybridserve.operations.export import grafana_dashboard, prometheus_rules, rules_yaml
from hybridserve.streaming.metrics import StreamMetrics

MakeProject = Callable[..., Project]
SLO = {"availability": "99.9%", "latency": {"p99": "50ms"}, "window": "28d"}


def _two_routes(make_project: MakeProject) -> Project:
    project = make_project(slo=SLO)
    assert project.source_file is not None
    raw = yaml.safe_load(project.source_file.read_text())
    raw["routes"]["fraud_rules"] = copy.deepcopy(raw["routes"]["fraud"])
    raw["routes"]["fraud_rules"]["model"] = "fraud_rules@production"
    del raw["routes"]["fraud_rules"]["slo"]["latency"]
    project.source_file.write_text(yaml.safe_dump(raw))
    from hybridserve.config import load_project

    return load_project(project.source_file, env=False)


def test_promtool_accepts_the_rules(make_project: MakeProject, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool is missing (Debian package prometheus; scripts/test installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    project = _two_routes(make_project)
    path = tmp_path / "rules.yml"
    path.write_text(rules_yaml(project))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    # fraud: 2 SLIs x (7 windows + 4 alerts); fraud_rules: availability only.
    assert "SUCCESS: 33 rules found" in done.stdout


def test_the_rules_follow_the_workbook(make_project: MakeProject) -> None:
    rules = prometheus_rules(_two_routes(make_project))
    fraud = next(g for g in rules["groups"] if g["name"] == "hybridserve-slo-fraud")["rules"]
    alerts = {r["alert"]: r for r in fraud if "alert" in r}
    page = alerts["HybridserveSLOBurn_fraud_availability_1h"]
    # 2% of a 28-day budget in one hour: burn 13.44; the budget of 99.9% is 0.001.
    assert page["expr"] == (
        'hybridserve:slo_errors:ratio_rate1h{route="fraud",slo="availability"} > '
        "(13.44 * 0.001) and "
        'hybridserve:slo_errors:ratio_rate5m{route="fraud",slo="availability"} > (13.44 * 0.001)'
    )
    assert page["labels"]["severity"] == "page"
    assert alerts["HybridserveSLOBurn_fraud_latency_3d"]["labels"]["severity"] == "ticket"
    latency = next(
        r for r in fraud if r.get("record") == "hybridserve:slo_errors:ratio_rate5m"
        and r["labels"]["slo"] == "latency"
    )  # fmt: skip
    assert 'le="0.05"' in latency["expr"]


def _names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(hybridserve_[a-z_]+)", expr))


def test_the_dashboard_has_a_row_per_route_on_real_metric_names(
    make_project: MakeProject,
) -> None:
    project = _two_routes(make_project)
    dashboard = grafana_dashboard(project)
    json.dumps(dashboard)  # a JSON model
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert [r["title"] for r in rows] == [
        "route fraud",
        "route fraud_rules",
        "route fraud_windows",  # the example's own second route
        "shared",
    ]
    panels = [p for p in dashboard["panels"] if p["type"] == "timeseries"]
    for route in ("fraud", "fraud_rules"):
        mine = [p for p in panels if any(f'route="{route}"' in t["expr"] for t in p["targets"])]
        titles = {p["title"] for p in mine}
        assert {
            "answers/s by source",
            "latency p50 / p99",
            "p99 per stage",
            "cache hits/s by tier",
            "fallbacks/s by reason",
            "SLO error ratio (1h) vs budget",
        } <= titles, titles
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])

    # Every metric a query names is one the server or a stream consumer exports.
    metrics = Metrics()
    route = RouteMetrics(metrics, "fraud")
    route.answered("online").inc()
    route.fallbacks("default", "timeout").inc()
    metrics.model_info.labels("fraud", "primary", "fraud", "1").set(1)
    metrics.breaker_state.labels("feature_store").set(0)
    stream = StreamMetrics("transactions")
    stream.lag.set(0)
    exported = set()
    for text in (metrics.render(), _render(stream)):
        for family in text_string_to_metric_families(text.decode()):
            exported |= {s.name for s in family.samples}
    used = set().union(*(_names_in(t["expr"]) for p in panels for t in p["targets"]))
    assert used and used <= exported, used - exported


def _render(stream: StreamMetrics) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(stream.registry)
