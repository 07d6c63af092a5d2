"""The ``registry`` fixture, once per metadata backend: the same suite runs on both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from hybridserve.registry import Registry

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/registry.db"
        return
    from backends import postgres_schema

    with postgres_schema() as url:
        yield url


@pytest.fixture
def registry(registry_url: str, tmp_path: Path) -> Iterator[Registry]:
    reg = Registry.open(registry_url, tmp_path / "artifacts")
    yield reg
    reg.close()


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fitted classifier saved with joblib, fitted without feature names."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(80, 3))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    path = tmp_path_factory.mktemp("models") / "fraud.joblib"
    joblib.dump(model, path)
    return path
