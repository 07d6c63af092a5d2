"""Build the bench project: the fraud example, its trained model, stored features and predictions.

Everything goes under one work directory (``bench/.work/`` by default, gitignored):

- ``project/``: the fraud example (``hybridserve.yaml`` + ``data/card_profile.parquet``) with one
  extra route, ``fraud_req``, whose 30 features all come from the request (server (e));
- ``model.joblib``: the registered ``fraud@production`` estimator, dumped for servers (b) and (c);
- ``rows.npy``: the cards' feature matrix, for timing the model in-process;
- ``bodies/*.jsonl``: one request body per line, per request kind, over every card in random order.

The online store gets the materialized ``card_profile`` view (server (f)) and the prediction store
a precomputed ``fraud`` prediction for every card (server (d)), as a batch run would leave them.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import yaml

REQ_ROUTE = "fraud_req"
"""The bench-only route whose features are all request features."""
ROUTE = "fraud"


@dataclass(frozen=True, slots=True)
class BenchProject:
    """Paths and facts the servers and the load generator need."""

    work: Path
    project_dir: Path
    model_path: Path
    compiler: str
    """What scores ``fraud@production`` in hybridserve's servers (the project's ``compile``
    option: ``tl2cgen``, ``treelite``, or ``none`` for the library's own predict)."""
    rows_path: Path
    features: list[str]
    """The model's 30 input names, in column order."""
    bodies: dict[str, Path]
    """Request kind -> JSONL file: ``features`` (b, c, e), ``stored`` (d), ``entity`` (f)."""
    n_cards: int
    stored: int
    """Precomputed predictions written to the prediction store (0 if that step failed)."""
    notes: list[str]


def _add_request_route(project_file: Path, features: list[str]) -> None:
    """Add ``fraud_req``: same settings as ``fraud``, every model input sent in the request."""
    doc = yaml.safe_load(project_file.read_text())
    route = dict(doc["routes"][ROUTE])
    route["features"] = []
    route["request_features"] = dict.fromkeys(features, "float")
    route["description"] = "Bench only: fraud, with all 30 features sent in the request."
    doc["routes"][REQ_ROUTE] = route
    project_file.write_text(yaml.safe_dump(doc, sort_keys=False))


def _write_bodies(
    out: Path, ids: list[str], matrix: np.ndarray, features: list[str], seed: int
) -> dict[str, Path]:
    """One JSONL file per request kind, each line one single-entity request, shuffled."""
    out.mkdir(parents=True, exist_ok=True)
    order = list(range(len(ids)))
    random.Random(seed).shuffle(order)
    files = {name: out / f"{name}.jsonl" for name in ("features", "stored", "entity")}
    with (
        files["features"].open("w") as f_features,
        files["stored"].open("w") as f_stored,
        files["entity"].open("w") as f_entity,
    ):
        for i in order:
            key = ids[i]
            values = dict(zip(features, matrix[i].tolist(), strict=True))
            body = {"entities": [{"key": key, "features": values}], "mode": "compute"}
            f_features.write(json.dumps(body, separators=(",", ":")) + "\n")
            f_stored.write(json.dumps({"entities": [key]}, separators=(",", ":")) + "\n")
            entity = {"entities": [key], "mode": "compute"}
            f_entity.write(json.dumps(entity, separators=(",", ":")) + "\n")
    return files


async def _fill_stores(project_file: Path, ids: list[str], notes: list[str]) -> int:
    """Materialize ``card_profile`` and store a ``batch`` prediction for every card.

    Stored predictions take the scoring time as ``as_of`` (the snapshot time of the online
    features they were computed from), so they are fresh for the route's ``max_staleness``.
    Returns how many predictions were stored.
    """
    from hybridserve.config import load_project
    from hybridserve.features.materialize import materialize
    from hybridserve.records import now
    from hybridserve.services import Services

    project = load_project(project_file)
    services = Services.open(project)
    try:
        result = await materialize(project, services.features, "card_profile")
        notes.append(f"materialized card_profile: {result.entities} cards")
        scorer = services.scorer(ROUTE)
        stored = 0
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            rows = await services.features.read_route(ROUTE, chunk)
            scored = scorer.score_rows(
                chunk,
                [row.plain() for row in rows],
                as_of=now(),
                source="batch",
                run_id="bench-online-precompute",
            )
            if scored.errors:
                notes.append(f"precompute: {len(scored.errors)} rows rejected")
            await services.predictions.put(scored.records)
            stored += len(scored.records)
        return stored
    finally:
        await services.close()


def build(work: Path, *, n_cards: int = 5000, seed: int = 2024) -> BenchProject:
    """Build (from scratch) the bench project under ``work`` and return its description."""
    from hybridserve.config import load_project
    from hybridserve.examples.fraud import scaffold
    from hybridserve.examples.fraud.data import FEATURES, NULLABLE_FEATURES, read_parquet
    from hybridserve.examples.fraud.train import train
    from hybridserve.registry import Registry

    notes: list[str] = []
    project_dir = work / "project"
    if project_dir.exists():
        shutil.rmtree(project_dir)
    project_file = scaffold(project_dir, n_cards=n_cards)
    features = list(FEATURES)
    _add_request_route(project_file, features)
    project = load_project(project_file)
    registry = Registry.from_project(project)
    try:
        train(project, registry=registry)
        version = registry.get(f"{ROUTE}@production")
        features = list(version.signature.names)
        runtime = registry.load(f"{ROUTE}@production")
        compiler = getattr(runtime, "compiler", None) or "none"
        model_path = work / "model.joblib"
        joblib.dump(runtime.model, model_path)
    finally:
        registry.close()

    view = project.view("card_profile")
    assert view.source is not None
    table = read_parquet(project.path(view.source.path))
    ids = [str(x) for x in table.column("card_id").to_pylist()]
    matrix = np.column_stack(
        [table.column(name).to_numpy(zero_copy_only=False).astype(np.float64) for name in features]
    )
    # Missing values are sent as the route's imputation default, so every server gets the same
    # complete row (JSON has no NaN, and request features have no default).
    for j, name in enumerate(features):
        if name in NULLABLE_FEATURES:
            col = matrix[:, j]
            col[np.isnan(col)] = NULLABLE_FEATURES[name]
    rows_path = work / "rows.npy"
    np.save(rows_path, matrix)
    bodies = _write_bodies(work / "bodies", ids, matrix, features, seed)

    stored = 0
    try:
        stored = asyncio.run(_fill_stores(project_file, ids, notes))
    except Exception as exc:  # servers (d)/(f) report nan; (a)-(c) still run
        notes.append(f"could not fill the stores: {type(exc).__name__}: {exc}")
    return BenchProject(
        work=work,
        project_dir=project_dir,
        model_path=model_path,
        compiler=compiler,
        rows_path=rows_path,
        features=features,
        bodies=bodies,
        n_cards=len(ids),
        stored=stored,
        notes=notes,
    )
