"""What a batch run adds to the quality loop once its chunks are scored: its input's drift
against the model version's reference profile (kept in the run's manifest, ``drift``) and,
when the route samples batch answers (``log.batch``), a sample of its answers in the
prediction log.

Both read the run's own files in the parent process after the executor is done (the input
for the features, the snapshot chunks for the scores), so no executor changes and a run that
logs nothing and has no reference pays nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from hybridserve.batch.chunk import chunk_file
from hybridserve.batch.inputs import InputPlan
from hybridserve.batch.manifest import RunManifest
from hybridserve.config import Project
from hybridserve.quality.drift import drift_of_counts
from hybridserve.quality.log import PredictionLog, row
from hybridserve.quality.profile import Profile, bin_counts, numeric

log = logging.getLogger("hybridserve.batch")
KS_SAMPLE = 5000


class _Tally:
    """Counts per reference bin of one feature over the run's chunks, and a sample for KS."""

    def __init__(self, bins: int) -> None:
        self.counts = np.zeros(bins)
        self.missing = 0
        self.total = 0
        self.sample: list[float] = []

    def add(self, profile: Any, values: Any) -> None:
        counts, missing, total = bin_counts(profile, values)
        self.counts += counts
        self.missing += missing
        self.total += total
        if profile.kind == "numeric" and len(self.sample) < KS_SAMPLE:
            arr = numeric(values)
            self.sample += arr[~np.isnan(arr)][: KS_SAMPLE - len(self.sample)].tolist()


def _scores(manifest: RunManifest) -> list[float]:
    out: list[float] = []
    for i in manifest.chunks_done:
        path = chunk_file(manifest.dir, i)
        if Path(path).exists():
            out += pq.read_table(path, columns=["score"])["score"].to_pylist()
    return out


def input_drift(
    project: Project, manifest: RunManifest, plan: InputPlan, names: list[str], profile: Profile
) -> dict[str, Any]:
    """The run's input (and scores) against ``profile``: a report for the manifest."""
    cfg = project.route(manifest.route).drift
    wanted = [n for n in names if n in profile.features]
    tallies = {n: _Tally(len(profile.features[n].shares)) for n in wanted}
    for _, table in plan.chunks(columns=wanted) if wanted else ():
        for n in wanted:
            tallies[n].add(profile.features[n], table[n].to_numpy(zero_copy_only=False))
    features = [
        drift_of_counts(
            n,
            profile.features[n],
            t.counts,
            t.missing,
            t.total,
            cfg,
            np.asarray(t.sample) if t.sample else None,
        )
        for n, t in tallies.items()
    ]
    score = None
    if profile.score is not None:
        scores = _scores(manifest)
        if scores:
            counts, missing, total = bin_counts(profile.score, scores)
            score = drift_of_counts(
                "score", profile.score, counts, missing, total, cfg, np.asarray(scores[:KS_SAMPLE])
            )
    reasons = [f"feature {f.name}: {r}" for f in features for r in f.reasons]
    if score is not None:
        reasons += [f"score: {r}" for r in score.reasons]
    return {
        "reference": manifest.model_ref,
        "drifted": reasons,
        "features": [f.to_dict() for f in features],
        "score": None if score is None else score.to_dict(),
    }


def log_sample(project: Project, manifest: RunManifest, plan: InputPlan, names: list[str]) -> int:
    """Offer the sampled share of the run's answers (with their features) to the log."""
    plog = PredictionLog(project)
    if not plog.batch or plog.sampling[manifest.route].batch <= 0:
        return 0
    picked: dict[str, dict[str, Any]] = {}
    for i in manifest.chunks_done:
        path = chunk_file(manifest.dir, i)
        if not Path(path).exists():
            continue
        for r in pq.read_table(path).to_pylist():
            if plog.sampled(manifest.route, "batch"):
                picked[str(r["entity"])] = r
    if not picked:
        return 0
    features: dict[str, dict[str, Any]] = {}
    keep = plog.keep(manifest.route)
    if keep != "none":
        for _, table in plan.chunks(columns=[plan.key, *names]):
            for r in table.to_pylist():
                key = str(r.pop(plan.key))
                if key in picked:
                    features[key] = r
    plog.start()
    try:
        for entity, r in picked.items():
            plog.offer(
                row(
                    ts=manifest.snapshot_at,
                    route=manifest.route,
                    source="batch",
                    entity=entity,
                    model=manifest.model,
                    model_version=manifest.model_version,
                    score=r.get("score"),
                    run_id=manifest.run_id,
                    features=features.get(entity),
                    keep=keep,
                ),
                features.get(entity),
            )
        plog.flush(timeout=60)
    finally:
        plog.close()
    return len(picked)


def after_run(
    project: Project,
    manifest: RunManifest,
    plan: InputPlan,
    names: list[str],
    profile: Profile | None,
) -> None:
    """Record the run's drift in its manifest and log its sampled answers; never fails the
    run (a problem is logged and noted in the manifest)."""
    if profile is not None:
        try:
            manifest.drift = input_drift(project, manifest, plan, names, profile)
        except Exception as exc:
            log.warning("run %s: input drift not computed: %s", manifest.run_id, exc)
            manifest.drift = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        log_sample(project, manifest, plan, names)
    except Exception as exc:
        log.warning("run %s: answers not logged: %s", manifest.run_id, exc)
