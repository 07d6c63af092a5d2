"""What a batch run adds to the quality loop once its chunks are scored: its input's drift
against the model version's reference profile (kept in the run's manifest, ``drift``) and,
when the route samples batch answers (``log.batch``), a sample of its answers in the
prediction log.

The drift report adds up the counts each chunk's worker wrote beside its snapshot
(:mod:`.drift`); the log sample reads the run's snapshot chunks in the parent process after
the executor is done. A run that logs nothing and has no reference pays nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from hybridserve.batch.chunk import chunk_file
from hybridserve.batch.drift import ChunkDrift, Tally, read_chunk_drift
from hybridserve.batch.inputs import InputPlan
from hybridserve.batch.manifest import RunManifest
from hybridserve.config import Project
from hybridserve.quality.drift import FeatureDrift, drift_of_counts
from hybridserve.quality.log import PredictionLog, row
from hybridserve.quality.profile import FeatureProfile, Profile

log = logging.getLogger("hybridserve.batch")


def input_drift(project: Project, manifest: RunManifest, profile: Profile) -> dict[str, Any]:
    """The run's input (and scores) against ``profile``: a report for the manifest, from the
    tallies each chunk's worker wrote (:mod:`.drift`); chunks without them are listed in
    ``uncounted_chunks``."""
    cfg = project.route(manifest.route).drift
    done = sorted(manifest.chunks_done)
    run = ChunkDrift({}, None)
    counted = []
    for i in done:  # in input order: the KS sample is each chunk's first values
        if (chunk := read_chunk_drift(manifest.dir, i)) is not None:
            run.add(chunk)
            counted.append(i)

    def judged(name: str, ref: FeatureProfile, t: Tally) -> FeatureDrift:
        sample = np.asarray(t.sample) if t.sample else None
        return drift_of_counts(name, ref, np.asarray(t.counts), t.missing, t.total, cfg, sample)

    features = [judged(n, profile.features[n], t) for n, t in run.features.items()]
    score = None
    if profile.score is not None and run.score is not None and run.score.total:
        score = judged("score", profile.score, run.score)
    reasons = [f"feature {f.name}: {r}" for f in features for r in f.reasons]
    if score is not None:
        reasons += [f"score: {r}" for r in score.reasons]
    report: dict[str, Any] = {
        "reference": manifest.model_ref,
        "drifted": reasons,
        "features": [f.to_dict() for f in features],
        "score": None if score is None else score.to_dict(),
    }
    if len(counted) < len(done):  # a worker that could not count (it logged why)
        report["uncounted_chunks"] = sorted(set(done) - set(counted))
    return report


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
            manifest.drift = input_drift(project, manifest, profile)
        except Exception as exc:
            log.warning("run %s: input drift not computed: %s", manifest.run_id, exc)
            manifest.drift = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        log_sample(project, manifest, plan, names)
    except Exception as exc:
        log.warning("run %s: answers not logged: %s", manifest.run_id, exc)
