"""The fraud example: deterministic data, a valid project file, scaffolding and training."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from hybridserve import examples
from hybridserve.config import load_project
from hybridserve.errors import ConfigError
from hybridserve.examples import fraud
from hybridserve.examples.fraud.data import (
    FEATURES,
    LABEL,
    NULLABLE_FEATURES,
    WINDOW_FEATURES,
    feature_matrix,
    fingerprint,
    generate_cards,
    generate_transactions,
    generate_windows,
    read_parquet,
    write_parquet,
)
from hybridserve.examples.fraud.train import (
    RULES_FEATURES,
    WINDOWS_FEATURES,
    fit_models,
    fit_windows_model,
    train,
)

AS_OF = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def cards() -> pa.Table:
    return generate_cards(20_000, seed=7, as_of=AS_OF)


# -- data ---------------------------------------------------------------------------------


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = write_parquet(generate_cards(500, seed=3, as_of=AS_OF), tmp_path / "a.parquet")
    b = write_parquet(generate_cards(500, seed=3, as_of=AS_OF), tmp_path / "b" / "b.parquet")
    assert a.read_bytes() == b.read_bytes()
    assert fingerprint(read_parquet(a)) == fingerprint(generate_cards(500, seed=3, as_of=AS_OF))
    assert fingerprint(generate_cards(500, seed=4, as_of=AS_OF)) != fingerprint(read_parquet(a))


def test_card_schema(cards: pa.Table) -> None:
    assert len(FEATURES) == len(set(FEATURES)) == 30
    assert cards.column_names == ["card_id", "event_time", *FEATURES, LABEL]
    assert cards.schema.field("event_time").type == pa.timestamp("us", tz="UTC")
    assert all(cards.schema.field(name).type == pa.float64() for name in FEATURES)
    ids = cards.column("card_id").to_pylist()
    assert ids[:2] == ["card_000000", "card_000001"]
    assert len(set(ids)) == cards.num_rows
    times = cards.column("event_time")
    assert pc.min(times).as_py() >= AS_OF - timedelta(hours=24)
    assert pc.max(times).as_py() < AS_OF


def test_fraud_rate_is_about_two_percent(cards: pa.Table) -> None:
    labels = cards.column(LABEL).to_numpy()
    assert set(np.unique(labels)) == {0, 1}
    assert 0.015 < labels.mean() < 0.025


def test_only_the_nullable_features_have_missing_values(cards: pa.Table) -> None:
    matrix = feature_matrix(cards)
    share = np.isnan(matrix).mean(axis=0)
    for i, name in enumerate(FEATURES):
        if name in NULLABLE_FEATURES:
            assert 0.005 < share[i] < 0.015, name
        else:
            assert share[i] == 0.0, name


def test_transactions(tmp_path: Path) -> None:
    start = datetime(2024, 6, 1, tzinfo=UTC)
    events = generate_transactions(5_000, cards=200, seed=5, start=start, rate_per_s=100.0)
    again = generate_transactions(5_000, cards=200, seed=5, start=start, rate_per_s=100.0)
    assert fingerprint(events) == fingerprint(again)
    assert events.column_names == [
        "event_id",
        "card_id",
        "event_time",
        "amount",
        "merchant_id",
        "merchant_category",
        "is_foreign",
    ]
    assert len(set(events.column("event_id").to_pylist())) == 5_000
    assert set(events.column("card_id").to_pylist()) <= {f"card_{i:06d}" for i in range(200)}
    micros = events.column("event_time").cast(pa.int64()).to_numpy()
    out_of_order = int((np.diff(micros) < 0).sum())
    assert 0 < out_of_order < 250
    start_us = int(start.timestamp()) * 1_000_000
    assert 40 < (micros.max() - start_us) / 1e6 < 60  # 5,000 events at 100/s
    assert micros.min() >= start_us - 30_000_000  # at most 30 s late
    assert pc.min(events.column("amount")).as_py() > 0
    named = generate_transactions(10, cards=["card_a", "card_b"], seed=1, start=start)
    assert set(named.column("card_id").to_pylist()) <= {"card_a", "card_b"}


def test_window_features_are_seeded_and_burst_on_fraudulent_cards(cards: pa.Table) -> None:
    a, b = generate_windows(cards, seed=7), generate_windows(cards, seed=7)
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(generate_windows(cards, seed=8))
    assert a.column_names == [*cards.column_names, *WINDOW_FEATURES]
    assert fingerprint(a.select(cards.column_names)) == fingerprint(cards)  # cards unchanged
    fraud_rows = cards.column(LABEL).to_numpy() == 1
    count = a.column("txn_count_10m").to_numpy()
    assert count[fraud_rows].mean() > 3 * count[~fraud_rows].mean()
    for name in WINDOW_FEATURES:
        values = a.column(name).to_numpy()
        assert (values >= 0).all() and not np.isnan(values).any(), name
    # A card with no transaction in the hour has zeros only.
    quiet = a.column("amount_max_1h").to_numpy() == 0
    assert quiet.any() and (a.column("amount_sum_10m").to_numpy()[quiet] == 0).all()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_cards"):
        generate_cards(0)
    with pytest.raises(ValueError, match="rate_per_s"):
        generate_transactions(10, rate_per_s=0)


# -- project file and scaffold ------------------------------------------------------------


def test_project_file_loads() -> None:
    assert fraud.PROJECT_FILE.is_file()  # shipped as package data
    project = load_project(fraud.PROJECT_FILE, env=False)
    assert project.name == "fraud"
    view = project.view("card_profile")
    assert list(view.features) == FEATURES
    assert view.ttl == 2 * 86_400
    for name, spec in view.features.items():
        assert spec.dtype == "float"
        if name in NULLABLE_FEATURES:
            assert (spec.on_missing, spec.default) == ("impute", NULLABLE_FEATURES[name])
        else:
            assert spec.on_missing == "reject"
    route = project.route("fraud")
    assert (route.model, route.entity, route.features) == (
        "fraud@production",
        "card",
        ["card_profile"],
    )
    assert (route.latency_budget, route.threshold) == (0.05, 0.5)
    assert view.ttl is not None
    assert 0 < route.max_staleness <= view.ttl
    assert [step.model_dump() for step in route.fallback] == [
        {"stale_prediction": True, "max_age": None},
        {"model": "fraud_rules@production"},
        {"default": 0.0},
    ]
    assert project.models["fraud"].features == FEATURES
    assert project.models["fraud_rules"].features == RULES_FEATURES


def test_the_windows_route_reads_the_stream_views_features() -> None:
    project = load_project(fraud.PROJECT_FILE, env=False)
    route = project.route("fraud_windows")
    assert (route.model, route.entity) == ("fraud_windows@production", "card")
    assert route.features == ["card_profile", "card_txn_windows"]
    assert project.models["fraud_windows"].features == WINDOWS_FEATURES
    assert [*RULES_FEATURES, *WINDOW_FEATURES] == WINDOWS_FEATURES
    windows = project.streams["transactions"].windows
    assert windows is not None and windows.view == "card_txn_windows"
    assert set(WINDOW_FEATURES) <= set(windows.features)  # the stream keeps all of them
    for name in WINDOW_FEATURES:  # a card without recent transactions has no row: zeros
        spec = project.feature_spec("fraud_windows", name)
        assert spec is not None and (spec.on_missing, spec.default) == ("impute", 0)
    # The stream and the benchmark still score `fraud`, which reads no window feature.
    assert project.streams["transactions"].route == "fraud"
    assert list(project.route_features("fraud")) == ["card_profile"]


def test_scaffold(tmp_path: Path) -> None:
    path = fraud.scaffold(tmp_path / "demo", n_cards=300, as_of=AS_OF)
    assert path == tmp_path / "demo" / "hybridserve.yaml"
    project = load_project(path, env=False)
    table = read_parquet(tmp_path / "demo" / "data" / "card_profile.parquet")
    assert table.num_rows == 300
    assert table.column_names == ["card_id", "event_time", *FEATURES]  # no label
    # The serving population is not the training population.
    training = generate_cards(300, seed=7, as_of=AS_OF).drop_columns([LABEL])
    assert fingerprint(table) != fingerprint(training)
    assert project.base_dir == (tmp_path / "demo").resolve()

    with pytest.raises(ConfigError, match="already exists"):
        fraud.scaffold(tmp_path / "demo")
    path.write_text("# edited\n" + path.read_text())
    assert examples.scaffold("fraud", tmp_path / "demo", force=True) == path
    assert not path.read_text().startswith("# edited")
    with pytest.raises(ConfigError, match="unknown example"):
        examples.scaffold("nope", tmp_path / "other")


# -- training -----------------------------------------------------------------------------


def test_fit_models_is_deterministic_and_predictive() -> None:
    a = fit_models(4_000, seed=7)
    b = fit_models(4_000, seed=7)
    assert a.fraud_metrics == b.fraud_metrics
    assert a.training_data_fingerprint == b.training_data_fingerprint
    assert 0.7 < a.fraud_metrics["roc_auc"] < 0.99
    assert 0.7 < a.rules_metrics["roc_auc"] < 0.99
    assert a.fraud.n_features_in_ == 30
    assert a.fraud_rules.n_features_in_ == 5


def test_the_windows_model_is_deterministic_and_moved_by_a_burst() -> None:
    a, b = fit_windows_model(4_000, seed=7), fit_windows_model(4_000, seed=7)
    assert a.metrics == b.metrics
    assert a.training_data_fingerprint == b.training_data_fingerprint
    assert 0.7 < a.metrics["roc_auc"] < 0.99
    assert a.model.n_features_in_ == len(WINDOWS_FEATURES) == 10
    quiet = np.zeros((1, 10))
    quiet[0, WINDOWS_FEATURES.index("card_age_days")] = 800
    burst = quiet.copy()
    for name, value in (("txn_count_10m", 4), ("amount_sum_10m", 300), ("amount_max_1h", 150)):
        burst[0, WINDOWS_FEATURES.index(name)] = value
    p_quiet, p_burst = a.model.predict_proba(np.vstack([quiet, burst]))[:, 1]
    assert p_burst > 10 * p_quiet


@dataclass
class FakeRegistry:
    """Records calls; stands in for the registry to test what training sends it."""

    registered: list[dict[str, Any]] = field(default_factory=list)
    promoted: list[tuple[str, int, str, str]] = field(default_factory=list)
    references: dict[str, dict[str, Any]] = field(default_factory=dict)

    def register(self, name: str, artifact_path: Path, **kwargs: Any) -> Any:
        version = 1 + sum(r["name"] == name for r in self.registered)
        self.registered.append(
            {"name": name, "model": joblib.load(artifact_path), "version": version, **kwargs}
        )
        return _Version(version, f"{name}/{version}")

    def promote(self, name: str, version: int, alias: str = "production", *, actor: str) -> None:
        self.promoted.append((name, version, alias, actor))

    def set_reference(self, ref: str, profile: dict[str, Any], *, actor: str) -> None:
        self.references[ref] = profile


@dataclass
class _Version:
    version: int
    ref: str


def test_train_sends_signatures_metrics_and_lineage() -> None:
    project = load_project(fraud.PROJECT_FILE, env=False)
    registry = FakeRegistry()
    result = train(project, n_cards=4_000, registry=registry, actor="tester")
    fraud_reg, rules_reg, windows_reg = registry.registered
    # Each version gets the reference profile of its own training features and scores.
    assert sorted(registry.references["fraud/1"]["features"]) == sorted(FEATURES)
    assert sorted(registry.references["fraud_rules/1"]["features"]) == sorted(RULES_FEATURES)
    assert sorted(registry.references["fraud_windows/1"]["features"]) == sorted(WINDOWS_FEATURES)
    assert registry.references["fraud/1"]["score"]["kind"] == "numeric"
    assert (fraud_reg["name"], fraud_reg["features"]) == ("fraud", FEATURES)
    assert (rules_reg["name"], rules_reg["features"]) == ("fraud_rules", RULES_FEATURES)
    assert (windows_reg["name"], windows_reg["features"]) == ("fraud_windows", WINDOWS_FEATURES)
    for reg in registry.registered:
        assert reg["flavour"] == "sklearn"
        assert reg["registered_by"] == "tester"
        assert reg["training_data_fingerprint"].startswith("sha256:")
        assert reg["description"] == project.models[reg["name"]].description
        assert {"roc_auc", "pr_auc", "log_loss"} <= set(reg["metrics"])
    assert fraud_reg["training_data_fingerprint"] == result.training_data_fingerprint
    assert rules_reg["training_data_fingerprint"] == result.training_data_fingerprint
    assert windows_reg["training_data_fingerprint"] == result.windows_data_fingerprint
    assert result.windows_data_fingerprint != result.training_data_fingerprint
    assert registry.promoted == [
        ("fraud", 1, "production", "tester"),
        ("fraud_rules", 1, "production", "tester"),
        ("fraud_windows", 1, "production", "tester"),
    ]
    assert result.fraud.metrics["roc_auc"] > 0.7
    x = np.zeros((2, 30))
    x[0, FEATURES.index("cardholder_age_years")] = np.nan  # the booster copes with NaN
    assert fraud_reg["model"].predict_proba(x).shape == (2, 2)
    assert all(f"{m}/1" in str(result) for m in ("fraud", "fraud_rules", "fraud_windows"))


def test_train_registers_and_promotes_into_the_project_registry(tmp_path: Path) -> None:
    project = load_project(fraud.scaffold(tmp_path, n_cards=200), env=False)
    result = train(project, n_cards=4_000, actor="tester")
    assert result.fraud.metrics["roc_auc"] > 0.7

    from hybridserve.registry import Registry

    registry = Registry.from_project(project)
    try:
        for name, features, expected in (
            ("fraud", FEATURES, result.fraud),
            ("fraud_rules", RULES_FEATURES, result.fraud_rules),
            ("fraud_windows", WINDOWS_FEATURES, result.fraud_windows),
        ):
            production = registry.get(f"{name}@production")
            assert production.version == expected.version
            runtime = registry.load(production.ref)
            assert runtime.signature.names == features
            scores = runtime.predict(np.zeros((3, len(features)))).scores
            assert scores.shape == (3,)
            assert ((scores >= 0) & (scores <= 1)).all()
    finally:
        registry.close()
