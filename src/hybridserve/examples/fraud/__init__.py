"""The card-fraud example project: a project file, synthetic data and a training script.

``scaffold(dest)`` lays out a ready-to-run project (used by ``hybridserve init`` and the
demo); :mod:`.train` registers the models of the project's routes (``fraud`` with its fallback
``fraud_rules``, and ``fraud_windows``, which also reads the stream's window features);
:mod:`.data` generates the cards and transactions, and :mod:`.transactions` feeds them to the
stream. It ships inside the package so it works after ``pip install``.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

from hybridserve.config import DEFAULT_FILENAME, load_project
from hybridserve.errors import ConfigError
from hybridserve.examples.fraud.data import LABEL, generate_cards, write_parquet

PROJECT_FILE = Path(__file__).with_name(DEFAULT_FILENAME)
"""The example's ``hybridserve.yaml``."""
VIEW = "card_profile"
SERVING_CARDS = 5_000
SERVING_SEED = 2024
"""Seed of the serving population; training uses another, so serving cards are unseen."""


def scaffold(
    dest: str | Path,
    *,
    force: bool = False,
    n_cards: int = SERVING_CARDS,
    seed: int = SERVING_SEED,
    as_of: datetime | None = None,
) -> Path:
    """Copy the project file into ``dest`` and write its serving data; return the file's path.

    The feature view's source (``data/card_profile.parquet``) gets ``n_cards`` unlabelled
    cards observed in the 24 hours before ``as_of`` (default: now). An existing project file
    is only replaced when ``force`` is true.
    """
    dest = Path(dest)
    target = dest / DEFAULT_FILENAME
    if target.exists() and not force:
        raise ConfigError(f"{target}: a project file already exists (use force to overwrite it)")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_FILE, target)
    project = load_project(target, env=False)
    source = project.view(VIEW).source
    if source is None:  # pragma: no cover - the shipped file always has one
        raise ConfigError(f"{target}: feature_views.{VIEW} has no source")
    cards = generate_cards(n_cards, seed=seed, as_of=as_of).drop_columns([LABEL])
    write_parquet(cards, project.path(source.path))
    return target
