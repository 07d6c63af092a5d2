"""Helpers for the batch tests: input tables, job definitions, and ways to read a run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hybridserve.config import Project
from hybridserve.predictions.store import PredictionStore
from hybridserve.storage import open_store

ROUTE = "fraud"


def cards(project: Project) -> pa.Table:
    """The example's card_profile rows (400 cards, one row each)."""
    return pq.read_table(project.path("data/card_profile.parquet"))


def write_input(project: Project, table: pa.Table, name: str = "cards.parquet") -> Path:
    path = project.path(f"data/{name}")
    pq.write_table(table, path, row_group_size=50)
    return path


def job(input_: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {"route": ROUTE, "input": input_, "chunk_rows": 20, "workers": 1, **changes}


def store_records(project: Project, run_id: str, entities: list[str]) -> list[dict[str, Any]]:
    """Every entity's record of run ``run_id`` (dicts without the run id), in order."""

    async def read() -> list[Any]:
        url = project.url(project.stores.predictions_url)
        store = PredictionStore(open_store(url, project.stores.prefix))
        try:
            return await store.get_run(ROUTE, run_id, entities)
        finally:
            await store.kv.close()

    out = []
    for r in asyncio.run(read()):
        d = None if r is None else r.to_dict()
        if d is not None:
            d.pop("run_id")
        out.append(d)
    return out


def snapshot(run_dir: str | Path, kind: str = "chunk") -> pa.Table:
    """The run's snapshot files, concatenated, sorted by entity, without the run id."""
    files = sorted(Path(run_dir).glob(f"{kind}-*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    if kind != "chunk":
        return table
    table = table.sort_by("entity").drop_columns(["run_id"])
    assert pc.count_distinct(table["entity"]).as_py() == table.num_rows, "duplicate entities"
    return table
