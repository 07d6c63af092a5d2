"""The artifact directory: atomic copies in, and a sha256 check before every load."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridserve.errors import ArtifactIntegrityError, InvalidInput
from hybridserve.registry.artifacts import ArtifactStore, sha256_of


def test_put_copies_under_name_and_version(tmp_path: Path) -> None:
    src = tmp_path / "model.bin"
    src.write_bytes(b"weights" * 1000)
    store = ArtifactStore(tmp_path / "artifacts")
    rel, sha = store.put("fraud", 3, src)
    assert rel == "fraud/3/model.bin"
    assert sha == sha256_of(src)
    assert store.verify(rel, sha) == tmp_path / "artifacts" / "fraud" / "3" / "model.bin"
    assert [p.name for p in (tmp_path / "artifacts" / "fraud" / "3").iterdir()] == ["model.bin"]


def test_verify_refuses_a_changed_or_missing_file(tmp_path: Path) -> None:
    src = tmp_path / "model.bin"
    src.write_bytes(b"abcdef")
    store = ArtifactStore(tmp_path / "artifacts")
    rel, sha = store.put("fraud", 1, src)
    stored = store.path(rel)
    stored.write_bytes(b"abcdeF")
    with pytest.raises(ArtifactIntegrityError, match=r"artifact of fraud/1 failed its integrity"):
        store.verify(rel, sha, label="fraud/1")
    stored.unlink()
    with pytest.raises(ArtifactIntegrityError, match=r"artifact of fraud/1 is missing"):
        store.verify(rel, sha, label="fraud/1")


def test_put_of_a_missing_source_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        ArtifactStore(tmp_path).put("fraud", 1, tmp_path / "nope.joblib")
