"""Online features: the latest values per entity, read with their age and status.

Each (view, entity) is one key, ``f:{view}:{entity}``, whose value holds that view's features
and whose ``as_of`` is the row's event time. Writes use the store's precedence rule, so a
materialization from an old snapshot never overwrites fresher values written by a stream.
A view's TTL is enforced here, at read time: a value older than the TTL reads as ``stale``
(it is kept, so the read can say *why* it is not served), a key that is absent as ``missing``.

Retention: an entry expires ``stores.feature_retention`` after it was written, or the view's
TTL when that is longer, so a value that may still be served is never dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson

from hybridserve.config import Project
from hybridserve.records import FeatureRow, FeatureStatus, FeatureValue, now
from hybridserve.storage import Entry, KVStore

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def feature_key(view: str, entity: str) -> str:
    return f"f:{view}:{entity}"


class CoalescedGets:
    """``get_many`` calls made in one turn of the event loop, answered by one backend call.

    Concurrent requests each read their own entities' features; under load dozens of them
    are taken in the same turn of the loop. Their keys go to the store together (one SQL
    query, one Redis round trip) and each caller gets its own slice, so the per-call cost of
    the store is paid once per turn instead of once per request. A lone request waits one
    turn of the loop for it.
    """

    __slots__ = ("_get", "_pending")

    def __init__(self, get: Callable[[Sequence[str]], Awaitable[list[Entry | None]]]) -> None:
        self._get = get
        self._pending: list[tuple[Sequence[str], asyncio.Future[list[Entry | None]]]] = []

    async def __call__(self, keys: Sequence[str]) -> list[Entry | None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Entry | None]] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush, loop)
        self._pending.append((keys, future))
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._pending = self._pending, []
        loop.create_task(self._read(batch))

    async def _read(
        self, batch: list[tuple[Sequence[str], asyncio.Future[list[Entry | None]]]]
    ) -> None:
        keys = [k for ks, _ in batch for k in ks] if len(batch) > 1 else batch[0][0]
        try:
            entries = await self._get(keys)
        except BaseException as exc:  # every caller sees the store's failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for ks, future in batch:
            if not future.done():  # a caller that gave up (its deadline) is skipped
                future.set_result(entries[start : start + len(ks)])
            start += len(ks)


class OnlineFeatureStore:
    def __init__(self, project: Project, kv: KVStore) -> None:
        self.project = project
        self.kv = kv
        # Through ``self.kv`` at each call: a store swapped in later (the demo's outage
        # drill wraps it) is the one read.
        self._coalesced = CoalescedGets(lambda keys: self.kv.get_many(keys))

    def retention(self, view: str) -> float | None:
        """Seconds a written entry of ``view`` is kept (``None``: until replaced)."""
        keep = self.project.stores.feature_retention
        ttl = self.project.view(view).ttl
        return None if keep is None else max(keep, ttl or 0.0)

    async def write(
        self,
        view: str,
        rows: Sequence[tuple[str, Mapping[str, Any], float]],
    ) -> int:
        """Write ``(entity, {feature: value}, event_time)`` rows; return how many won."""
        keep = self.retention(view)  # raises FeatureViewNotFound early
        exp = None if keep is None else now() + keep
        writes = [
            Entry(feature_key(view, entity), orjson.dumps(values, option=_NUMPY), ts, exp)
            for entity, values, ts in rows
        ]
        return await self.kv.put_many(writes)

    async def read(
        self,
        wanted: Mapping[str, Sequence[str]],
        entities: Sequence[str],
        *,
        at: float | None = None,
    ) -> list[FeatureRow]:
        """Read ``{view: [feature, ...]}`` for ``entities`` in one store round trip."""
        at = now() if at is None else at
        views = list(wanted)
        keys = [feature_key(v, e) for e in entities for v in views]
        entries = await self.kv.get_many(keys)
        out: list[FeatureRow] = []
        nv = len(views)
        for i, entity in enumerate(entities):
            row = FeatureRow(entity)
            oldest: float | None = None
            for j, view in enumerate(views):
                entry = entries[i * nv + j]
                names = wanted[view]
                if entry is None:
                    for name in names:
                        row.values[name] = FeatureValue(None, "missing")
                    continue
                age = max(0.0, at - entry.as_of)
                ttl = self.project.feature_views[view].ttl
                status: FeatureStatus = "stale" if ttl is not None and age > ttl else "present"
                data = orjson.loads(entry.value)
                for name in names:
                    if name in data and data[name] is not None:
                        row.values[name] = FeatureValue(data[name], status, age)
                    else:
                        row.values[name] = FeatureValue(None, "missing", age)
                if status == "present" and (oldest is None or entry.as_of < oldest):
                    oldest = entry.as_of
            row.as_of = oldest
            out.append(row)
        return out

    async def read_values(
        self,
        wanted: Mapping[str, Sequence[str]],
        entities: Sequence[str],
        *,
        at: float | None = None,
    ) -> list[tuple[dict[str, Any], float | None]]:
        """Scoring's fast read: per entity, present values (``None`` where missing or stale)
        and the stalest present view's event time. One store round trip, shared with the
        other requests reading in the same turn of the loop (:class:`CoalescedGets`); no
        per-feature objects; the same TTL rule as :meth:`read`."""
        at = now() if at is None else at
        views = list(wanted)
        ttls = [self.project.feature_views[v].ttl for v in views]
        entries = await self._coalesced([feature_key(v, e) for e in entities for v in views])
        out: list[tuple[dict[str, Any], float | None]] = []
        nv = len(views)
        loads = orjson.loads
        for i in range(len(entities)):
            values: dict[str, Any] = {}
            oldest: float | None = None
            for j in range(nv):
                entry = entries[i * nv + j]
                if entry is None:
                    continue
                ttl = ttls[j]
                if ttl is not None and at - entry.as_of > ttl:
                    continue  # stale: as good as missing for scoring
                data = loads(entry.value)
                if nv == 1 and len(data) == len(wanted[views[j]]):
                    values = data
                else:
                    for name in wanted[views[j]]:
                        values[name] = data.get(name)
                if oldest is None or entry.as_of < oldest:
                    oldest = entry.as_of
            out.append((values, oldest))
        return out

    async def read_route(
        self, route: str, entities: Sequence[str], *, at: float | None = None
    ) -> list[FeatureRow]:
        """The stored features a route reads, for ``entities``."""
        return await self.read(self.project.route_features(route), entities, at=at)


def merge_request_features(
    row: FeatureRow, request_values: Mapping[str, Any] | None, at: float
) -> dict[str, Any]:
    """Plain feature values for scoring: stored present values, overridden by the request's."""
    values = row.plain()
    if request_values:
        values.update(request_values)
        row.as_of = at if row.as_of is None else row.as_of
    return values
