"""The L1 cache: recent prediction records in the server process, bounded and TTL-aware.

It answers before the prediction store does, so it must never serve past a request's
staleness bound: an entry keeps the record itself and the router checks the record's age and
model version exactly as it does for a store read. The TTL only bounds how long an entry may
sit here (a route's ``max_staleness``). Eviction is first-in-first-out once full: cheaper
than LRU bookkeeping on every hit, and entries expire soon anyway.
"""

from __future__ import annotations

from hybridserve.records import PredictionRecord, now


class L1Cache:
    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._data: dict[tuple[str, str], tuple[float, PredictionRecord]] = {}

    def get(self, route: str, entity: str, at: float | None = None) -> PredictionRecord | None:
        item = self._data.get((route, entity))
        if item is None:
            return None
        expires, record = item
        if expires <= (now() if at is None else at):
            self._data.pop((route, entity), None)
            return None
        return record

    def put(self, record: PredictionRecord, ttl: float, at: float | None = None) -> None:
        """Keep ``record`` for at most ``ttl`` seconds after its ``as_of``."""
        if self.max_entries <= 0:
            return
        expires = record.as_of + ttl
        if expires <= (now() if at is None else at):
            return
        key = (record.route, record.entity)
        current = self._data.get(key)
        if current is not None and current[1].as_of > record.as_of:
            return  # the same precedence rule as the store
        if current is None and len(self._data) >= self.max_entries:
            del self._data[next(iter(self._data))]
        self._data[key] = (expires, record)

    def invalidate(self, route: str | None = None) -> None:
        if route is None:
            self._data.clear()
        else:
            for key in [k for k in self._data if k[0] == route]:
                del self._data[key]

    def __len__(self) -> int:
        return len(self._data)
