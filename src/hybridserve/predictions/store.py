"""The prediction store: one record schema for batch, stream and online results.

Records live under ``p:{route}:{entity}`` with ``as_of`` as the compare-and-set time, so a
record computed from older features never replaces one computed from newer features,
whichever path wrote it, and replaying a write changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from hybridserve.records import PredictionRecord
from hybridserve.storage import Entry, KVStore


def prediction_key(route: str, entity: str) -> str:
    return f"p:{route}:{entity}"


class PredictionStore:
    def __init__(self, kv: KVStore, *, retention: float | None = None) -> None:
        self.kv = kv
        self.retention = retention
        """Seconds after ``as_of`` that a record is kept (``None``: until replaced)."""

    async def put(self, records: Sequence[PredictionRecord]) -> int:
        """Store records under the precedence rule; return how many replaced what was stored."""
        keep = self.retention
        return await self.kv.put_many(
            [
                Entry(
                    prediction_key(r.route, r.entity),
                    r.to_bytes(),
                    r.as_of,
                    None if keep is None else r.as_of + keep,
                )
                for r in records
            ]
        )

    async def get(self, route: str, entities: Sequence[str]) -> list[PredictionRecord | None]:
        entries = await self.kv.get_many([prediction_key(route, e) for e in entities])
        return [None if e is None else PredictionRecord.from_bytes(e.value) for e in entries]
