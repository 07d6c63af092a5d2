"""The registry suite: runs unchanged on SQLite and on PostgreSQL (see conftest)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import update

from hybridserve.errors import (
    ArtifactIntegrityError,
    ConfigError,
    Conflict,
    InvalidInput,
    ModelNotFound,
)
from hybridserve.registry import ModelRef, ModelVersion, Registry
from hybridserve.registry.schema import schema_version

FEATURES = ["a", "b", "c"]


def _register(registry: Registry, model_file: Path, name: str = "fraud") -> ModelVersion:
    return registry.register(
        name,
        model_file,
        features=FEATURES,
        metrics={"auc": np.float64(0.91)},
        description="tiny",
        training_data_fingerprint="sha256:abc",
        registered_by="alice",
    )


def test_register_numbers_versions_per_model(registry: Registry, model_file: Path) -> None:
    first = _register(registry, model_file)
    second = _register(registry, model_file)
    other = _register(registry, model_file, name="churn")
    assert (first.version, second.version, other.version) == (1, 2, 1)
    assert first.ref == "fraud/1"
    assert first.flavour == "sklearn"
    assert first.task == "classification"
    assert first.signature.names == FEATURES
    assert first.artifact == "fraud/1/fraud.joblib"
    assert first.metrics == {"auc": 0.91}
    assert first.lineage["registered_by"] == "alice"
    assert first.lineage["training_data_fingerprint"] == "sha256:abc"
    assert registry.get("fraud/1") == first
    assert registry.list_models() == ["churn", "fraud"]
    assert [v.version for v in registry.versions("fraud")] == [1, 2]
    assert registry.versions("unknown") == []
    data = first.to_dict()
    assert data["ref"] == "fraud/1"
    assert data["lineage"]["registered_at"].endswith("Z")
    assert [e.action for e in registry.audit("fraud")] == ["register", "register"]


def test_refs_resolve_to_alias_version_or_latest(registry: Registry, model_file: Path) -> None:
    for _ in range(3):
        _register(registry, model_file)
    registry.set_alias("fraud", "canary", 2, actor="bob")
    assert registry.get("fraud").version == 3
    assert registry.get("fraud/1").version == 1
    assert registry.get("fraud@canary").version == 2
    assert registry.get(ModelRef("fraud", alias="canary")).version == 2
    assert registry.resolve_version("fraud", "canary") == 2
    assert registry.aliases("fraud") == {"canary": 2}


def test_unknown_refs_list_what_exists(registry: Registry, model_file: Path) -> None:
    _register(registry, model_file)
    registry.promote("fraud", 1, actor="bob")
    with pytest.raises(ModelNotFound, match=r"no model named 'nope'.*registered models: fraud"):
        registry.get("nope@production")
    with pytest.raises(ModelNotFound, match=r"no version 7 \(versions: 1\)"):
        registry.get("fraud/7")
    with pytest.raises(ModelNotFound, match=r"no alias 'canary' \(aliases: production -> 1\)"):
        registry.resolve_version("fraud", "canary")
    with pytest.raises(ModelNotFound, match="no version 9"):
        registry.promote("fraud", 9, actor="bob")


def test_promote_then_rollback_restores_the_alias(registry: Registry, model_file: Path) -> None:
    for _ in range(2):
        _register(registry, model_file)
    registry.promote("fraud", 1, actor="alice")
    registry.promote("fraud", 2, actor="bob")
    assert registry.resolve_version("fraud", "production") == 2

    assert registry.rollback("fraud", actor="carol") == 1
    assert registry.aliases("fraud") == {"production": 1}

    moves = [e for e in registry.audit("fraud") if e.alias == "production"]
    assert [(e.action, e.actor, e.from_version, e.to_version) for e in moves] == [
        ("rollback", "carol", 2, 1),
        ("promote", "bob", 1, 2),
        ("promote", "alice", None, 1),
    ]
    assert moves[0].at >= moves[1].at
    assert moves[0].to_dict()["at"].endswith("Z")
    # A second rollback undoes the first.
    assert registry.rollback("fraud", actor="carol") == 2


def test_rollback_without_an_earlier_version_is_a_conflict(
    registry: Registry, model_file: Path
) -> None:
    _register(registry, model_file)
    registry.promote("fraud", 1, actor="alice")
    with pytest.raises(Conflict, match="no earlier version"):
        registry.rollback("fraud", actor="alice")
    assert registry.resolve_version("fraud", "production") == 1


def test_delete_alias_is_audited(registry: Registry, model_file: Path) -> None:
    _register(registry, model_file)
    registry.set_alias("fraud", "shadow", 1, actor="alice")
    registry.delete_alias("fraud", "shadow", actor="alice")
    assert registry.aliases("fraud") == {}
    last = registry.audit("fraud", limit=1)[0]
    assert (last.action, last.alias, last.from_version, last.to_version) == (
        "delete_alias",
        "shadow",
        1,
        None,
    )


def test_tampered_artifact_refuses_to_load(
    registry: Registry, model_file: Path, tmp_path: Path
) -> None:
    mv = _register(registry, model_file)
    registry.load(mv.ref)  # intact: loads
    stored = registry.artifacts.path(str(mv.artifact))
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match=r"artifact of fraud/1 failed its integrity"):
        registry.load("fraud")


def test_concurrent_registrations_get_distinct_versions(
    registry_url: str, model_file: Path, tmp_path: Path
) -> None:
    registries = [Registry.open(registry_url, tmp_path / "artifacts") for _ in range(3)]
    start = threading.Barrier(len(registries))
    got: list[int] = []
    errors: list[BaseException] = []

    def work(reg: Registry) -> None:
        start.wait()
        try:
            for _ in range(3):
                got.append(_register(reg, model_file).version)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r,)) for r in registries]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    for r in registries:
        r.close()
    assert not errors
    assert sorted(got) == list(range(1, 10))


def test_register_validates_its_inputs(registry: Registry, model_file: Path) -> None:
    with pytest.raises(InvalidInput, match="pass features"):
        registry.register("fraud", model_file)
    with pytest.raises(InvalidInput, match="invalid model name"):
        registry.register("bad name", model_file, features=FEATURES)
    with pytest.raises(InvalidInput, match="does not exist"):
        registry.register("fraud", model_file.with_name("nope.joblib"), features=FEATURES)
    with pytest.raises(ConfigError, match="known flavours"):
        registry.register("fraud", model_file, flavour="tensorflow", features=FEATURES)
    with pytest.raises(InvalidInput, match="flavour 'callable' needs"):
        registry.register("fraud", model_file, flavour="callable", features=FEATURES)
    assert registry.list_models() == []


def test_newer_schema_is_refused(registry: Registry, registry_url: str, tmp_path: Path) -> None:
    with registry.engine.begin() as conn:
        conn.execute(update(schema_version).values(version=99))
    with pytest.raises(ConfigError, match=r"schema version 99.*upgrade hybridserve"):
        Registry.open(registry_url, tmp_path / "artifacts")


def test_reopen_keeps_everything(registry_url: str, model_file: Path, tmp_path: Path) -> None:
    with Registry.open(registry_url, tmp_path / "artifacts") as reg:
        _register(reg, model_file)
        reg.promote("fraud", 1, actor="alice")
    with Registry.open(registry_url, tmp_path / "artifacts") as reg:
        assert reg.get("fraud@production").version == 1
        assert reg.load("fraud@production").version == 1
