"""The command line as a user runs it: a subprocess, its output and its exit code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import hybridserve

# The subprocess runs the hybridserve these tests import, wherever the environment installed one.
SOURCE_ROOT = str(Path(hybridserve.__file__).resolve().parents[1])


def hs(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hybridserve", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(Path.home()),
            "COLUMNS": "200",
            "PYTHONPATH": SOURCE_ROOT,
        },
    )


@pytest.fixture
def project(trained_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "p"
    shutil.copytree(trained_dir, dest)
    return dest


def edit(project: Path, change: str, to: str) -> None:
    path = project / "hybridserve.yaml"
    text = path.read_text()
    assert change in text
    path.write_text(text.replace(change, to, 1))


def test_version() -> None:
    r = hs("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"hybridserve {hybridserve.__version__}\n"


def test_validate_ok(project: Path) -> None:
    r = hs("validate", "-p", str(project))
    assert r.returncode == 0, r.stderr
    assert "ok (2 routes" in r.stdout


@pytest.mark.parametrize(
    ("change", "to", "message"),
    [
        (
            "max_staleness: 36h",
            "max_staleness: soon",
            "routes.fraud.max_staleness: expected a duration like '1h', got 'soon'",
        ),
        (
            "max_staleness: 36h",
            "max_staleness: 36h\n    colour: red",
            "routes.fraud.colour: unknown key",
        ),
        (
            "path: data/card_profile.parquet",
            "path: data/nope.parquet",
            "feature_views.card_profile.source.path: file not found",
        ),
        ("model: fraud@production", "model: fraud@nowhere", "routes.fraud.model: "),
    ],
)
def test_broken_project_gives_one_clear_message_and_exit_2(
    project: Path, change: str, to: str, message: str
) -> None:
    edit(project, change, to)
    r = hs("validate", "-p", str(project))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert message in lines[0]
    assert "Traceback" not in r.stderr


def test_promote_then_rollback_restores_alias_and_audits_both(project: Path) -> None:
    artifact = next((project / ".hybridserve" / "artifacts" / "fraud").rglob("*.joblib"))
    features = ",".join(
        yaml.safe_load((project / "hybridserve.yaml").read_text())["models"]["fraud"]["features"]
    )
    r = hs(
        "registry",
        "register",
        "fraud",
        str(artifact),
        "--features",
        features,
        "--metric",
        "roc_auc=0.9",
        "-p",
        str(project),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["version"] == 2
    assert hs("registry", "promote", "fraud", "2", "-p", str(project)).returncode == 0
    r = hs("registry", "list", "-p", str(project), "--json")
    assert {m["name"]: m["aliases"]["production"] for m in json.loads(r.stdout)}["fraud"] == 2
    assert hs("registry", "rollback", "fraud", "-p", str(project)).returncode == 0
    r = hs("registry", "list", "-p", str(project), "--json")
    assert {m["name"]: m["aliases"]["production"] for m in json.loads(r.stdout)}["fraud"] == 1
    audit = json.loads(hs("registry", "audit", "fraud", "-p", str(project), "--json").stdout)
    moves = [
        (e["action"], e["from_version"], e["to_version"])
        for e in audit
        if e["action"] in ("promote", "rollback")
    ]
    assert ("promote", 1, 2) in moves and ("rollback", 2, 1) in moves


def test_usage_errors_exit_2_and_failures_exit_1(project: Path) -> None:
    assert hs("registry", "promote", "-p", str(project)).returncode == 2  # missing arguments
    r = hs("registry", "show", "nope@production", "-p", str(project))
    assert r.returncode == 1 and "nope" in r.stderr and "Traceback" not in r.stderr
    r = hs("validate", "-p", str(project / "missing"))
    assert r.returncode == 2 and "project file not found" in r.stderr


def test_features_and_score(project: Path) -> None:
    r = hs("features", "get", "card_000001", "--route", "fraud", "-p", str(project), "--json")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["features"]["amount_mean_30d"]["status"] == "present"
    r = hs("score", "fraud", "card_000001", "ghost", "-p", str(project), "--json", "--write")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [p["entity"] for p in out["predictions"]] == ["card_000001"]
    assert out["predictions"][0]["model_version"] == 1
    assert out["errors"][0]["entity"] == "ghost" and "missing feature" in out["errors"][0]["reason"]


def test_materialize_prints_summary(project: Path) -> None:
    r = hs("features", "materialize", "card_profile", "-p", str(project))
    assert r.returncode == 0, r.stderr
    assert "card_profile: 400 entities from 400 rows" in r.stdout


def test_init_leaves_a_project_that_validates(tmp_path: Path) -> None:
    """The first two commands a new user runs: what init prints next must succeed."""
    new = tmp_path / "new"
    r = hs("init", str(new))
    assert r.returncode == 0, r.stderr
    assert (new / "hybridserve.yaml").exists()
    assert "training and registering fraud, fraud_rules and fraud_windows" in r.stdout
    assert all(f"{m}/1" in r.stdout for m in ("fraud", "fraud_rules", "fraud_windows"))
    assert r.stdout.rstrip().splitlines()[-1] == f"next: hybridserve validate -p {new}"
    v = hs("validate", "-p", str(new))
    assert v.returncode == 0, v.stderr
    assert "ok (2 routes" in v.stdout
    assert hs("init", str(new)).returncode == 2  # refuses to overwrite


@pytest.mark.slow
def test_demo_once(tmp_path: Path) -> None:
    r = hs("demo", "--once", "--dir", str(tmp_path / "demo"), "--port", "0", "--events", "500")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "fraud/1" in out and "card_000000" in out and "completed" in out
    assert "500 events read, 500 scored" in out
    assert "fraud_windows route, compute" in out and "fraud_windows/1" in out
    for source in (
        "│ batch ",
        "│ cache ",
        "│ stream ",
        "│ online ",
        "fallback:stale_prediction",
        "fallback:default",
    ):
        assert source in out, (source, out)


def test_error_text_is_printed_as_is_not_as_markup_or_emoji(project: Path) -> None:
    """What a message quotes (a key, a path, a backend's text) reaches the terminal unchanged."""
    edit(project, "routes:", 'server: {":key: [bold]x[/bold] :warning:": 1}\nroutes:')
    r = hs("validate", "-p", str(project))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "server.:key: [bold]x[/bold] :warning:: unknown key" in r.stderr, r.stderr
    assert "\N{KEY}" not in r.stderr and "\N{WARNING SIGN}" not in r.stderr


@pytest.mark.parametrize("command", ["validate", "serve"])
def test_an_api_key_that_cannot_match_stops_the_project_loading(
    project: Path, command: str
) -> None:
    edit(project, "routes:", "server:\n  api_keys: [{name: ops, sha256: not-a-digest}]\nroutes:")
    r = hs(command, "-p", str(project))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "server.api_keys.0.sha256: api key 'ops': expected 64 hex digits" in lines[0]
