from __future__ import annotations

from pathlib import Path

import pytest

from hybridserve.config import load_project, project_from_dict
from hybridserve.errors import ConfigError
from hybridserve.units import format_duration, parse_duration, parse_size

GOOD = """
name: t
entities:
  card: {key: card_id}
feature_views:
  profile:
    entity: card
    ttl: 2d
    source: {path: data/profile.parquet}
    features:
      amount: float
      count: {dtype: int, on_missing: impute, default: 0}
routes:
  fraud:
    model: fraud@production
    entity: card
    features: [profile]
    max_staleness: 30m
    latency_budget: 50ms
    fallback: [stale_prediction, {model: rules@production}, {default: 0.0}]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hybridserve.yaml"
    path.write_text(text)
    return path


def test_loads_and_parses_durations(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, GOOD))
    route = project.routes["fraud"]
    assert route.max_staleness == 1800.0
    assert route.latency_budget == pytest.approx(0.05)
    assert project.feature_views["profile"].ttl == 2 * 86400
    assert [type(s).__name__ for s in route.fallback] == [
        "StalePredictionStep",
        "ModelStep",
        "DefaultStep",
    ]
    assert project.route_features("fraud") == {"profile": ["amount", "count"]}
    assert project.path("data/x").parent == tmp_path.resolve() / "data"
    assert project.url("sqlite:///db/a.db") == f"sqlite:///{tmp_path.resolve()}/db/a.db"


@pytest.mark.parametrize(
    ("replace", "expected"),
    [
        (
            "max_staleness: 30m",
            "routes.fraud.max_staleness: expected a duration like '1h', got 'soon'",
        ),
        ("latency_budget: 50ms", "routes.fraud.colour: unknown key"),
        (
            "entity: card\n    features: [profile]",
            "routes.fraud.features.0: unknown feature view 'nope'",
        ),
        ("amount: float", "feature_views.profile.features.amount.dtype: Input should be"),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, replace: str, expected: str) -> None:
    bad = {
        "max_staleness: 30m": "max_staleness: soon",
        "latency_budget: 50ms": "latency_budget: 50ms\n    colour: red",
        "entity: card\n    features: [profile]": "entity: card\n    features: [nope]",
        "amount: float": "amount: floaty",
    }[replace]
    path = write(tmp_path, GOOD.replace(replace, bad))
    with pytest.raises(ConfigError) as info:
        load_project(path)
    message = info.value.message
    assert expected in message
    assert message.startswith(str(path))
    assert info.value.exit_code == 2


def test_invalid_yaml_points_at_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "routes: [\n  oops")
    with pytest.raises(ConfigError, match=r"hybridserve.yaml:\d+:\d+: invalid YAML"):
        load_project(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="project file not found"):
        load_project(tmp_path / "nope.yaml")


def test_environment_overrides_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRIDSERVE_ONLINE_STORE_URL", "redis://example:6379/3")
    monkeypatch.setenv("HYBRIDSERVE_REGISTRY_URL", "postgresql://u@h/db")
    project = load_project(write(tmp_path, GOOD))
    assert project.stores.online == "redis://example:6379/3"
    assert project.stores.predictions_url == "redis://example:6379/3"
    assert project.registry.url == "postgresql://u@h/db"


def test_impute_needs_a_default() -> None:
    with pytest.raises(ConfigError, match="on_missing 'impute' needs a 'default'"):
        project_from_dict(
            {
                "entities": {"c": {"key": "id"}},
                "feature_views": {
                    "v": {"entity": "c", "features": {"a": {"on_missing": "impute"}}}
                },
            }
        )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("30s", 30), ("1h", 3600), ("7d", 604800), (5, 5.0), ("1.5m", 90)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["soon", "-1s", "1y", "", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_duration(text)  # type: ignore[arg-type]


def test_sizes_and_formatting() -> None:
    assert parse_size("1MiB") == 1024 * 1024
    assert parse_size("512kb") == 512_000
    assert parse_size(10) == 10
    with pytest.raises(ValueError):
        parse_size("lots")
    assert format_duration(0.25) == "250ms"
    assert format_duration(3600) == "1h"
    assert format_duration(90) == "1.5m"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            {"sha256": "abc123"},
            "server.api_keys.0.sha256: api key 'ops': expected 64 hex digits (the key's sha256,"
            " as 'sha256sum' prints it), got 6 characters",
        ),
        ({"sha256": "z" * 64}, "server.api_keys.0.sha256: api key 'ops': expected 64 hex digits"),
        ({"key": ""}, "server.api_keys.0.key: api key 'ops': expected a non-empty key"),
        (
            {"key": "clé"},
            "server.api_keys.0.key: api key 'ops': expected visible ASCII characters only",
        ),
        ({"key": "two words"}, "server.api_keys.0.key: api key 'ops': expected visible ASCII"),
    ],
)
def test_api_keys_that_could_never_match_are_refused(
    tmp_path: Path, entry: dict[str, str], expected: str
) -> None:
    import yaml

    raw = {"server": {"api_keys": [{"name": "ops", **entry}]}}
    path = write(tmp_path, yaml.safe_dump(raw, allow_unicode=True))
    with pytest.raises(ConfigError) as info:
        load_project(path)
    assert info.value.message.startswith(f"{path}: {expected}"), info.value.message
    assert info.value.exit_code == 2
    if entry.get("key"):
        assert entry["key"] not in info.value.message  # a key is never echoed


def test_api_key_sha256_and_body_timeout() -> None:
    digest = "2BB80D537B1DA3E38BD30361AA855686BDE0EACD7162FEF6A25FE97BF527A25B"
    server = project_from_dict(
        {"server": {"body_timeout": "2s", "api_keys": [{"name": "ops", "sha256": digest}]}}
    ).server
    assert server.body_timeout == 2.0 and server.api_keys[0].sha256 == digest.lower()
    assert project_from_dict({}).server.body_timeout == 10.0
    with pytest.raises(ConfigError, match=r"server\.body_timeout: Input should be greater than 0"):
        project_from_dict({"server": {"body_timeout": 0}})
