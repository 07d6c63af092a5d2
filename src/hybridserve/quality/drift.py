"""Drift: how far a window of traffic has moved from its model version's reference profile.

Per feature and for the score, over the answers of a sliding window:

- **PSI** (population stability index) over the profile's bins,
  ``sum((q - p) * ln(q / p))`` with both shares floored at 1e-4 (an empty bin must not make
  it infinite); a missing value is its own bin on both sides, so a feature that goes missing
  raises the PSI too;
- the **missing-value share**, against the reference's (a rise of ``drift.missing`` is drift);
- for numeric features, scipy's two-sample **KS** test against the profile's sample, when
  the route sets ``drift.ks_pvalue``.

:func:`compare` is the one computation; the three places that need it feed it differently:
:class:`DriftMonitor` keeps the recent answers of each route in memory (fed by the prediction
log's observers, so it sees sampled answers whether or not the writer keeps up) for
``/metrics`` and health, ``hybridserve drift`` reads the prediction log, and a batch run
compares its input (``batch/quality.py``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridserve.config import DriftConfig, Project
from hybridserve.quality.profile import FeatureProfile, Profile, bin_counts, numeric

FLOOR = 1e-4


@dataclass(slots=True)
class FeatureDrift:
    name: str
    n: int
    psi: float
    missing: float
    missing_ref: float
    ks_pvalue: float | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.name,
            "n": self.n,
            "psi": round(self.psi, 6),
            "missing": round(self.missing, 6),
            "missing_ref": round(self.missing_ref, 6),
            "ks_pvalue": self.ks_pvalue,
            "drifted": self.drifted,
            "reasons": self.reasons,
        }


@dataclass(slots=True)
class DriftReport:
    route: str
    model: str | None
    model_version: int | None
    n: int
    window: float | None
    features: list[FeatureDrift]
    score: FeatureDrift | None
    judged: bool
    """``False`` when the window held fewer than ``drift.min_samples`` answers, or the model
    version has no reference profile (``note`` says which)."""
    note: str = ""

    @property
    def reasons(self) -> list[str]:
        """One line per drifted feature (and the score): what health shows."""
        out = []
        for f in [*self.features, *([self.score] if self.score is not None else [])]:
            out += [
                f"{'score' if f is self.score else 'feature ' + f.name}: {r}" for r in f.reasons
            ]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "model": self.model,
            "model_version": self.model_version,
            "n": self.n,
            "window_s": self.window,
            "judged": self.judged,
            "note": self.note,
            "drifted": self.reasons,
            "features": [f.to_dict() for f in self.features],
            "score": None if self.score is None else self.score.to_dict(),
        }


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """PSI of two share vectors of the same bins (each summing to 1)."""
    p = np.maximum(np.asarray(expected, dtype=np.float64), FLOOR)
    q = np.maximum(np.asarray(actual, dtype=np.float64), FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def feature_drift(
    name: str, ref: FeatureProfile, values: Sequence[Any], cfg: DriftConfig
) -> FeatureDrift:
    """One feature's (or the score's) drift of ``values`` against ``ref``."""
    counts, missing, total = bin_counts(ref, values)
    sample = None
    if ref.kind == "numeric":
        arr = numeric(values)
        sample = arr[~np.isnan(arr)]
    return drift_of_counts(name, ref, counts, missing, total, cfg, sample)


def drift_of_counts(
    name: str,
    ref: FeatureProfile,
    counts: npt.NDArray[np.float64],
    missing: int,
    total: int,
    cfg: DriftConfig,
    sample: npt.NDArray[np.float64] | None = None,
) -> FeatureDrift:
    """Drift from counts per bin of ``ref`` (what :func:`bin_counts` gives; a batch run adds
    them up over its chunks) and, for KS, a sample of the present values."""
    # Missing values as one more bin on both sides: a feature going missing moves the PSI.
    expected = [*(s * (1 - ref.missing) for s in ref.shares), ref.missing]
    actual = [*(counts / total if total else counts), missing / total if total else 0.0]
    share = missing / total if total else 0.0
    d = FeatureDrift(name, total, psi(expected, actual), share, ref.missing)
    if d.psi > cfg.psi:
        d.reasons.append(f"PSI {d.psi:.3f} > {cfg.psi:g}")
    if d.missing - ref.missing > cfg.missing:
        d.reasons.append(
            f"missing {d.missing:.1%} (reference {ref.missing:.1%}, allowed +{cfg.missing:.0%})"
        )
    if cfg.ks_pvalue is not None and ref.sample and sample is not None and sample.size >= 2:
        from scipy.stats import ks_2samp

        d.ks_pvalue = float(ks_2samp(np.asarray(ref.sample), sample).pvalue)
        if d.ks_pvalue < cfg.ks_pvalue:
            d.reasons.append(f"KS p-value {d.ks_pvalue:.2g} < {cfg.ks_pvalue:g}")
    return d


def compare(
    route: str,
    profile: Profile | None,
    rows: Sequence[Mapping[str, Any]],
    scores: Sequence[float | None],
    cfg: DriftConfig,
    *,
    model: str | None = None,
    model_version: int | None = None,
    window: float | None = None,
    min_samples: int | None = None,
) -> DriftReport:
    """Drift of ``rows`` (feature name -> value; an absent name is a missing value) and of
    ``scores`` against ``profile``."""
    n = len(rows)
    report = DriftReport(route, model, model_version, n, window, [], None, judged=False)
    if profile is None:
        report.note = "no reference profile for this model version"
        return report
    need = cfg.min_samples if min_samples is None else min_samples
    if n < need:
        report.note = f"{n} answers in the window, fewer than drift.min_samples {need}"
        return report
    report.judged = True
    for name, ref in profile.features.items():
        report.features.append(feature_drift(name, ref, [r.get(name) for r in rows], cfg))
    if profile.score is not None:
        kept = [s for s in scores if s is not None]
        if kept:
            report.score = feature_drift("score", profile.score, kept, cfg)
    return report


ProfileLoader = Callable[[str, int], Profile | None]
"""(model, version) -> its reference profile, or ``None``."""


class DriftMonitor:
    """The recent answers of each route, in memory, and their drift against the reference.

    Fed with prediction-log rows (``observe``); keeps at most ``drift.max_samples`` per route
    and judges the ones within ``drift.window``, on the model version most of them came
    from. :meth:`report` is recomputed at most every ``every`` seconds per route;
    :meth:`reasons` only reads what was computed last.
    """

    def __init__(self, project: Project, load: ProfileLoader, *, every: float = 5.0) -> None:
        self.cfg = {r: c.drift for r, c in project.routes.items()}
        self._rows: dict[str, deque[tuple[float, Mapping[str, Any], Any, str, int]]] = {
            r: deque(maxlen=c.max_samples) for r, c in self.cfg.items()
        }
        self._load = load
        self._profiles: dict[tuple[str, int], tuple[float, Profile | None]] = {}
        self._reports: dict[str, tuple[float, DriftReport]] = {}
        self._every = every
        self._lock = threading.Lock()

    def observe(self, row: Mapping[str, Any]) -> None:
        """One logged answer (a prediction-log row plus its feature ``values``)."""
        values = row.get("values")
        rows = self._rows.get(row["route"])
        if values is None or rows is None or row.get("model") is None:
            return
        item = (row["ts"], values, row.get("score"), row["model"], row["model_version"])
        with self._lock:  # report() copies the deque from another thread
            rows.append(item)

    def profile(self, model: str, version: int) -> Profile | None:
        key = (model, version)
        hit = self._profiles.get(key)
        if hit is not None and time.monotonic() - hit[0] < 60:
            return hit[1]
        found = self._load(model, version)
        self._profiles[key] = (time.monotonic(), found)
        return found

    def report(self, route: str, *, fresh: bool = False) -> DriftReport:
        cached = self._reports.get(route)
        if not fresh and cached is not None and time.monotonic() - cached[0] < self._every:
            return cached[1]
        cfg = self.cfg[route]
        cutoff = time.time() - cfg.window
        with self._lock:
            recent = [r for r in list(self._rows[route]) if r[0] >= cutoff]
        report = judge(route, recent, self.profile, cfg)
        self._reports[route] = (time.monotonic(), report)
        return report

    def reasons(self) -> dict[str, list[str]]:
        """Route -> why it drifted (routes that did not are left out): what health reads.

        From the reports last computed (the server's exporter refreshes them every 15 s), so
        it never reads the registry or judges a window: safe to call on the event loop.
        """
        out = {}
        for route, (_, report) in list(self._reports.items()):
            if report.reasons:
                out[route] = report.reasons
        return out


def judge(
    route: str,
    recent: Iterable[tuple[float, Mapping[str, Any], Any, str, int]],
    load: ProfileLoader,
    cfg: DriftConfig,
) -> DriftReport:
    """Drift of ``(ts, values, score, model, version)`` answers, on the version most of them
    came from (the canary's share is judged with the primary's when it is smaller)."""
    items = list(recent)
    if not items:
        return DriftReport(route, None, None, 0, cfg.window, [], None, False, "no answers logged")
    tally: dict[tuple[str, int], int] = {}
    for it in items:
        tally[(it[3], it[4])] = tally.get((it[3], it[4]), 0) + 1
    model, version = max(tally, key=lambda k: tally[k])
    mine = [it for it in items if (it[3], it[4]) == (model, version)]
    scores = [
        None if s is None or (isinstance(s, float) and math.isnan(s)) else s
        for s in (it[2] for it in mine)
    ]
    return compare(
        route,
        load(model, version),
        [it[1] for it in mine],
        scores,
        cfg,
        model=model,
        model_version=version,
        window=cfg.window,
    )
