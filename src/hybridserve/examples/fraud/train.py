"""Train and register the fraud example's models: ``fraud``, its fallback ``fraud_rules``, and
``fraud_windows``.

``fraud`` is a histogram gradient-boosting classifier over all 30 card features; ``fraud_rules``
is a scaled logistic regression over five of them, cheap and robust, which the route falls back
to when the main model cannot answer. ``fraud_windows`` (the ``fraud_windows`` route's model) is
a scaled logistic regression over those five and five of the stream's window features
(``card_txn_windows``), so a fresh transaction moves its score. All are fitted on plain numpy
matrices (pandas is not a dependency), so each registration passes its signature explicitly,
and all are promoted to ``production``.
"""

from __future__ import annotations

import getpass
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import joblib
import numpy as np
import numpy.typing as npt
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from hybridserve.examples.fraud.data import (
    FEATURES,
    LABEL,
    TIMESTAMP,
    WINDOW_FEATURES,
    feature_matrix,
    fingerprint,
    generate_cards,
    generate_windows,
)
from hybridserve.quality.profile import build_profile

if TYPE_CHECKING:
    from hybridserve.config import Project

MODEL = "fraud"
RULES_MODEL = "fraud_rules"
RULES_FEATURES: list[str] = [
    "declined_count_7d",
    "foreign_txn_share_30d",
    "ip_country_mismatch_share_30d",
    "velocity_1h_max",
    "card_age_days",
]
"""Inputs of the fallback model, in signature order (none of them is ever missing)."""
WINDOWS_MODEL = "fraud_windows"
WINDOWS_FEATURES: list[str] = [*RULES_FEATURES, *WINDOW_FEATURES]
"""Inputs of ``fraud_windows``, in signature order: the fallback's five card_profile features,
then five ``card_txn_windows`` features."""
ALIAS = "production"


class _ModelVersion(Protocol):
    @property
    def version(self) -> int: ...

    @property
    def ref(self) -> str: ...


class RegistryLike(Protocol):
    """The part of the registry that training uses."""

    def register(
        self,
        name: str,
        artifact: Path,
        /,
        *,
        flavour: str | None = None,
        features: list[str] | None = None,
        metrics: dict[str, float] | None = None,
        description: str = "",
        training_data_fingerprint: str | None = None,
        registered_by: str | None = None,
    ) -> Any: ...

    def promote(
        self, name: str, version: int, alias: str = "production", /, *, actor: str
    ) -> Any: ...

    def set_reference(self, ref: str, profile: dict[str, Any], /, *, actor: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class TrainedModel:
    """One registered model version and its held-out metrics."""

    name: str
    version: int
    ref: str
    features: list[str]
    metrics: dict[str, float]


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What :func:`train` registered and promoted."""

    fraud: TrainedModel
    fraud_rules: TrainedModel
    training_data_fingerprint: str
    """Of the cards ``fraud`` and ``fraud_rules`` were fitted on."""
    fraud_windows: TrainedModel
    windows_data_fingerprint: str
    """Of the cards and window features ``fraud_windows`` was fitted on."""
    alias: str = ALIAS

    def __str__(self) -> str:
        return (
            ", ".join(
                f"{m.ref} (roc_auc {m.metrics['roc_auc']:.3f}, pr_auc {m.metrics['pr_auc']:.3f})"
                for m in (self.fraud, self.fraud_rules, self.fraud_windows)
            )
            + f" promoted to {self.alias}"
        )


def _metrics(
    y_true: npt.NDArray[np.int64], scores: npt.NDArray[np.float64], n_train: int
) -> dict[str, float]:
    return {
        "roc_auc": float(roc_auc_score(y_true, scores)),
        "pr_auc": float(average_precision_score(y_true, scores)),
        "log_loss": float(log_loss(y_true, scores, labels=[0, 1])),
        "positive_rate": float(y_true.mean()),
        "n_train": float(n_train),
        "n_test": float(len(y_true)),
    }


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in some containers
        return "hybridserve-example"


@dataclass(frozen=True, slots=True)
class FittedModels:
    """Both fitted estimators, their held-out metrics and the training data's fingerprint."""

    fraud: Any
    fraud_rules: Any
    fraud_metrics: dict[str, float]
    rules_metrics: dict[str, float]
    training_data_fingerprint: str
    references: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Model name -> its reference profile (``quality/profile.py``): training features and
    the model's scores on them, for drift."""


def fit_models(n_cards: int = 20_000, seed: int = 7) -> FittedModels:
    """Fit both models on freshly generated cards (75/25 stratified split); no registry."""
    table = generate_cards(n_cards, seed=seed)
    x = feature_matrix(table)
    y = table.column(LABEL).to_numpy().astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=seed
    )
    # Small and regularized: a few hundred positives, and it must fit in a second or two.
    model = HistGradientBoostingClassifier(
        max_iter=100,
        learning_rate=0.05,
        max_leaf_nodes=15,
        min_samples_leaf=40,
        l2_regularization=1.0,
        early_stopping=False,
        random_state=seed,
    )
    cols = [FEATURES.index(name) for name in RULES_FEATURES]
    rules = Pipeline([("scale", StandardScaler()), ("logreg", LogisticRegression(max_iter=1000))])
    # One OpenMP thread: on data this small, threads gain little, and on a busy machine (a
    # server or a test run alongside) spinning OpenMP workers make the fit several times slower.
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(x_train, y_train)
        rules.fit(x_train[:, cols], y_train)
    references = {
        MODEL: build_profile(
            {n: x_train[:, i] for i, n in enumerate(FEATURES)}, model.predict_proba(x_train)[:, 1]
        ).to_dict(),
        RULES_MODEL: build_profile(
            {n: x_train[:, FEATURES.index(n)] for n in RULES_FEATURES},
            rules.predict_proba(x_train[:, cols])[:, 1],
        ).to_dict(),
    }
    # Event times follow the wall clock; fingerprint only what the models were fitted on.
    return FittedModels(
        fraud=model,
        fraud_rules=rules,
        fraud_metrics=_metrics(y_test, model.predict_proba(x_test)[:, 1], len(y_train)),
        rules_metrics=_metrics(y_test, rules.predict_proba(x_test[:, cols])[:, 1], len(y_train)),
        training_data_fingerprint=fingerprint(table.drop_columns([TIMESTAMP])),
        references=references,
    )


@dataclass(frozen=True, slots=True)
class FittedWindows:
    """``fraud_windows`` fitted, its held-out metrics, training data fingerprint and reference."""

    model: Any
    metrics: dict[str, float]
    training_data_fingerprint: str
    reference: dict[str, Any]


def fit_windows_model(n_cards: int = 20_000, seed: int = 7) -> FittedWindows:
    """Fit ``fraud_windows`` on the cards :func:`fit_models` uses plus their window features
    (:func:`~hybridserve.examples.fraud.data.generate_windows`); same split; no registry."""
    table = generate_windows(generate_cards(n_cards, seed=seed), seed=seed)
    x = feature_matrix(table, WINDOWS_FEATURES)
    y = table.column(LABEL).to_numpy().astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=seed
    )
    model = Pipeline([("scale", StandardScaler()), ("logreg", LogisticRegression(max_iter=1000))])
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(x_train, y_train)
    reference = build_profile(
        {n: x_train[:, i] for i, n in enumerate(WINDOWS_FEATURES)},
        model.predict_proba(x_train)[:, 1],
    ).to_dict()
    return FittedWindows(
        model=model,
        metrics=_metrics(y_test, model.predict_proba(x_test)[:, 1], len(y_train)),
        training_data_fingerprint=fingerprint(table.drop_columns([TIMESTAMP])),
        reference=reference,
    )


def train(
    project: Project,
    *,
    n_cards: int = 20_000,
    seed: int = 7,
    registry: RegistryLike | None = None,
    actor: str | None = None,
) -> TrainResult:
    """Train ``fraud``, ``fraud_rules`` and ``fraud_windows``, register them and promote each
    to ``production``.

    ``registry`` defaults to the project's own, opened and closed here.
    """
    if registry is not None:
        return _train_into(registry, project, n_cards=n_cards, seed=seed, actor=actor)
    from hybridserve.registry import Registry

    own = Registry.from_project(project)
    try:
        return _train_into(own, project, n_cards=n_cards, seed=seed, actor=actor)
    finally:
        own.close()


def _train_into(
    registry: RegistryLike, project: Project, *, n_cards: int, seed: int, actor: str | None
) -> TrainResult:
    actor = actor or _actor()
    fitted = fit_models(n_cards, seed)
    windows = fit_windows_model(n_cards, seed)
    defaults = {
        MODEL: "Card fraud probability: gradient-boosted trees over 30 card-profile features.",
        RULES_MODEL: "Fallback fraud score: scaled logistic regression over 5 robust features.",
        WINDOWS_MODEL: "Card fraud probability from 5 card-profile and 5 stream window features.",
    }
    cards_fp = fitted.training_data_fingerprint
    plan = (
        (MODEL, fitted.fraud, FEATURES, fitted.fraud_metrics, cards_fp, fitted.references[MODEL]),
        (
            RULES_MODEL,
            fitted.fraud_rules,
            RULES_FEATURES,
            fitted.rules_metrics,
            cards_fp,
            fitted.references[RULES_MODEL],
        ),
        (
            WINDOWS_MODEL,
            windows.model,
            WINDOWS_FEATURES,
            windows.metrics,
            windows.training_data_fingerprint,
            windows.reference,
        ),
    )
    trained: dict[str, TrainedModel] = {}
    with tempfile.TemporaryDirectory(prefix="hybridserve-fraud-") as tmp:
        for name, estimator, features, metrics, data_fp, reference in plan:
            artifact = Path(tmp) / f"{name}.joblib"
            joblib.dump(estimator, artifact)
            config = project.models.get(name)
            mv: _ModelVersion = registry.register(
                name,
                artifact,
                flavour="sklearn",
                features=list(features),
                metrics=dict(metrics),
                description=(config.description if config else "") or defaults[name],
                training_data_fingerprint=data_fp,
                registered_by=actor,
            )
            registry.set_reference(mv.ref, reference, actor=actor)
            registry.promote(name, mv.version, ALIAS, actor=actor)
            trained[name] = TrainedModel(name, mv.version, mv.ref, list(features), dict(metrics))
    return TrainResult(
        trained[MODEL],
        trained[RULES_MODEL],
        cards_fp,
        trained[WINDOWS_MODEL],
        windows.training_data_fingerprint,
    )
