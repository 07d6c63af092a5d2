"""What each server process tells the others through the project's store, and reading it back.

Every ``health.publish_interval`` (and at shutdown) a server process writes, off the request
path, to its prediction store:

- ``hb:{writer}``: its heartbeat: breaker states, the model versions it serves, and each
  route's answers over the health window; it expires after three intervals (at least 10 s),
  so a dead process drops out of health on its own;
- ``slo:{route}:{hour}:{writer}``: its minute slots of that hour (:mod:`observability.tally`),
  kept for the longest SLO window. A restarted process has a new ``writer`` id, so the
  documents of its previous life stay and the sums keep counting them.

Health, SLO reports and cost add up what every writer published: every worker of every host
sharing the store, not one process's view. Each write is a compare-and-set on ``as_of`` (the
write time), so a document only ever moves forward.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from hybridserve.config import Project
from hybridserve.observability.tally import Slot
from hybridserve.records import now
from hybridserve.routing.router import Router
from hybridserve.storage import KVStore
from hybridserve.storage.base import Entry

log = logging.getLogger("hybridserve.operations")
HEARTBEAT = "hb:"
SLO = "slo:"


def heartbeat_life(project: Project) -> float:
    """How long a heartbeat counts: three publish intervals, and at least 10 s, so that a
    busy process (or a busy reader) is not taken for a dead one."""
    return max(3 * project.health.publish_interval, 10.0)


def new_writer_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass(slots=True)
class ProcessView:
    """One server process as its heartbeat describes it."""

    writer: str
    pid: int
    host: str
    at: float
    breakers: dict[str, str] = field(default_factory=dict)
    models: dict[str, dict[str, str]] = field(default_factory=dict)
    """Route -> role -> ``name/version``."""
    recent: dict[str, Slot] = field(default_factory=dict)
    """Route -> its answers over the health window."""

    def to_json(self) -> dict[str, Any]:
        return {
            "writer": self.writer,
            "pid": self.pid,
            "host": self.host,
            "at": self.at,
            "breakers": self.breakers,
            "models": self.models,
            "recent": {r: s.to_json() for r, s in self.recent.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessView:
        return cls(
            str(data["writer"]),
            int(data.get("pid", 0)),
            str(data.get("host", "")),
            float(data.get("at", 0.0)),
            {str(k): str(v) for k, v in dict(data.get("breakers", {})).items()},
            {str(r): dict(m) for r, m in dict(data.get("models", {})).items()},
            {str(r): Slot.from_json(s) for r, s in dict(data.get("recent", {})).items()},
        )


def process_view(router: Router, writer: str) -> ProcessView:
    """This process, now."""
    models: dict[str, dict[str, str]] = {}
    for route, role, model in router.models.loaded():
        models.setdefault(route, {})[role] = model.label
    recent = {r: router.tally.recent(r) for r in router.project.routes}
    return ProcessView(
        writer,
        os.getpid(),
        socket.gethostname(),
        now(),
        dict(router.breakers.states()),
        models,
        recent,
    )


def retention(project: Project) -> float:
    """How long SLO documents are kept: the longest SLO window (at least 28 days) plus a day."""
    windows = [r.slo.window for r in project.routes.values() if r.slo is not None]
    return max([28 * 86400.0, *windows]) + 86400.0


class Publisher:
    """Publishes this process's heartbeat and SLO counters (see the module docstring)."""

    def __init__(self, kv: KVStore, router: Router, *, writer: str | None = None) -> None:
        self.kv = kv
        self.router = router
        self.writer = writer or new_writer_id()
        self.interval = router.project.health.publish_interval
        self.keep = retention(router.project)
        self._lock = asyncio.Lock()

    def view(self) -> ProcessView:
        return process_view(self.router, self.writer)

    async def publish(self) -> None:
        """Write the heartbeat and every SLO document with news (raises on a store error;
        unwritten minutes are kept for the next try)."""
        async with self._lock:
            tally = self.router.tally
            tally.charge()
            at = now()
            docs = tally.take_dirty()
            writes = [
                Entry(
                    f"{SLO}{route}:{hour}:{self.writer}",
                    orjson.dumps({"minutes": minutes}),
                    at,
                    (hour + 1) * 3600 + self.keep,
                )
                for (route, hour), minutes in docs.items()
            ]
            view = orjson.dumps(self.view().to_json())
            life = heartbeat_life(self.router.project)
            writes.append(Entry(f"{HEARTBEAT}{self.writer}", view, at, at + life))
            try:
                await self.kv.put_many(writes)
            except BaseException:
                for (route, hour), minutes in docs.items():
                    tally.restore(route, hour, minutes)
                raise

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.publish()
            except Exception as exc:  # the store is down: health says so; try again later
                log.debug("cannot publish health and SLO counters: %r", exc)

    async def close(self) -> None:
        """Publish the last counts and remove the heartbeat (this process stops serving)."""
        try:
            await self.publish()
            await self.kv.delete_many([f"{HEARTBEAT}{self.writer}"])
        except Exception as exc:
            log.warning("could not publish the last SLO counters: %r", exc)


async def read_processes(kv: KVStore, at: float | None = None) -> list[ProcessView]:
    """Every live server process's heartbeat."""
    at = now() if at is None else at
    keys = [k async for k in kv.scan(HEARTBEAT)]
    views = []
    for entry in await kv.get_many(keys):
        if entry is None or (entry.expires_at is not None and entry.expires_at <= at):
            continue
        try:
            views.append(ProcessView.from_json(orjson.loads(entry.value)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.debug("skipping a heartbeat: %r", exc)
    return sorted(views, key=lambda v: v.writer)


async def read_minutes(kv: KVStore, route: str, since: float) -> dict[int, Slot]:
    """Minute (epoch minutes) -> the route's counts summed over every writer, from ``since``."""
    first_hour = int(since // 3600)
    keys = []
    async for key in kv.scan(f"{SLO}{route}:"):
        hour = key[len(SLO) + len(route) + 1 :].partition(":")[0]
        if hour.isdigit() and int(hour) >= first_hour:
            keys.append(key)
    out: dict[int, Slot] = {}
    first_minute = int(since // 60)
    for entry in await kv.get_many(keys):
        if entry is None:
            continue
        for minute, data in _minutes(entry.value):
            if minute >= first_minute:
                have = out.get(minute)
                if have is None:
                    out[minute] = Slot.from_json(data)
                else:
                    have.add(Slot.from_json(data))
    return out


def _minutes(value: bytes) -> Iterable[tuple[int, dict[str, Any]]]:
    try:
        doc = orjson.loads(value)
        return [(int(m), d) for m, d in doc["minutes"].items()]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return []
