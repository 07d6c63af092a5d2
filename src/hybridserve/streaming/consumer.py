"""The stream consumer: reads micro-batches, processes them in order, follows model aliases.

A reader task fills a small queue while the processor works, but only while fewer than
``max_in_flight`` entries are read and not yet acknowledged (backpressure). Reads that piled
up in the queue are processed together, up to ``batch_size``. The next batch is read and
computed while the last one writes and commits (``BatchProcessor.prepare``). When a batch
fails, nothing of it is acknowledged: the consumer drops what it read ahead (the batch
prepared after it too), rewinds the source to its unacknowledged entries and re-reads them
*one at a time*, so a poison entry fails alone and reaches ``max_deliveries`` (then the
dead-letter stream) without dragging its neighbours with it. Pending entries of dead
consumers are reclaimed every so often.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, fields
from typing import Any

import orjson

from hybridserve.config import Project
from hybridserve.errors import HybridServeError
from hybridserve.records import now
from hybridserve.registry.refs import ModelRef
from hybridserve.services import Services
from hybridserve.storage import Entry
from hybridserve.streaming import deadlines
from hybridserve.streaming.events import RawEntry
from hybridserve.streaming.metrics import StreamMetrics
from hybridserve.streaming.pipeline import (
    BatchProcessor,
    BatchResult,
    CommitContention,
    EventCounts,
    Prepared,
)
from hybridserve.streaming.sources import (
    REDIS_SCHEMES,
    Measured,
    Reclaims,
    Rewinds,
    Shared,
    Source,
    StreamIO,
    open_io,
    stream_config,
)
from hybridserve.streaming.sources.base import RedisOutputs
from hybridserve.streaming.state import KVStateStore, RedisStateStore, StateStore

log = logging.getLogger("hybridserve.stream")

_CALM = 20
"""Batches finished one at a time after one that met a commit conflict."""
_RIVALS_EVERY = 0.1
"""Seconds between looks at whether other consumers read the same entities (``Shared``): a
rival that keeps conflicting gives up on a batch (eight conflicts) in a few hundred ms."""


@dataclass(slots=True)
class Totals(EventCounts):
    failures: int = 0
    batches: int = 0
    conflicts: int = 0
    """Commits redone because another consumer moved one of the batch's entities first."""


def open_state(project: Project, name: str, services: Services, io: StreamIO) -> StateStore:
    """Redis state (one atomic commit per batch) on a Redis store, else the KV state."""
    cfg = stream_config(project, name)
    url = project.url(project.stores.online)
    if url.partition("://")[0].lower() not in REDIS_SCHEMES:
        return KVStateStore(services.online_kv, name, cfg.dedup_ttl)
    # Outputs join the commit when the output stream is on the same Redis as the state.
    out = io.outputs
    same = out if isinstance(out, RedisOutputs) and out.url == url else None
    return RedisStateStore(
        url,
        project.stores.prefix,
        name,
        cfg.dedup_ttl,
        output_key=same.output_key if same else None,
        maxlen=same.maxlen if same else None,
    )


class StreamConsumer:
    def __init__(
        self,
        services: Services,
        name: str,
        *,
        consumer: str = "consumer-1",
        io: StreamIO | None = None,
        source: Source | None = None,
        metrics: StreamMetrics | None = None,
        poll_interval: float = 2.0,
        stats_interval: float = 5.0,
        stop_timeout: float = 2.0,
    ) -> None:
        project = services.project
        self.services, self.name, self.consumer = services, name, consumer
        self.cfg = stream_config(project, name)
        if io is None and source is not None:  # a source that is its own sinks (memory)
            io = StreamIO(source, source, source)  # type: ignore[arg-type]
        self.io = io or open_io(project, name, consumer=consumer, kv=services.online_kv)
        self.source = self.io.source
        # The capabilities this source has (``None``: it has not).
        self._rewinds = self.source if isinstance(self.source, Rewinds) else None
        self._reclaims = self.source if isinstance(self.source, Reclaims) else None
        self._measured = self.source if isinstance(self.source, Measured) else None
        self._shared = self.source if isinstance(self.source, Shared) else None
        self.state = open_state(project, name, services, self.io)
        scorer = services.scorer(self.cfg.route) if self.cfg.route else None
        self.processor = BatchProcessor(services, name, self.io, self.state, scorer)
        self.metrics = metrics or StreamMetrics(name)
        counted = self.metrics.prediction_log
        services.prediction_log.on_count = lambda r, o, n: counted.labels(r, o).inc(n)
        if scorer is not None:
            self.metrics.model_version.set(scorer.runtime.version)
        self.poll_interval, self.stats_interval = poll_interval, stats_interval
        self.stop_timeout = stop_timeout
        self.totals = Totals()
        self._in_flight = 0
        self._careful = 0
        self._failures = 0
        """Batches failed in a row (the wait before the next read grows with it)."""
        self._carry: list[RawEntry] | None = None
        """Entries taken from the read queue and left for the next batch (it was full)."""
        self._finishing: tuple[asyncio.Task[BatchResult], Prepared] | None = None
        """The last batch, writing and committing while the next is read and computed."""
        self._rival = self._shared is not None
        """Whether another consumer may commit this one's entities (see ``_overlap``);
        assumed on a ``Shared`` source until the first look."""
        self._contended = 0
        """Batches left to finish one at a time after a commit conflict."""
        self._empty_since: float | None = None
        """Since when every read came back empty (``None``: the last one had entries)."""
        self._next_pending_check = 0.0
        self._claim_soon = False
        self._waiting_logged = False

    # -- the loop ------------------------------------------------------------------------

    async def run(
        self, stop: asyncio.Event | None = None, *, until_idle: float | None = None
    ) -> Totals:
        """Consume until ``stop`` is set, or until ``until_idle`` seconds in which every read
        came back empty and nothing was in flight, once nothing is pending in the group (see
        :meth:`_drained`). Idleness is what the reads saw, not time since start-up: a
        consumer slow to make its first read does not stop unread.

        Once ``stop`` is set, the batch in progress has ``stop_timeout`` seconds to commit;
        then it is abandoned unacknowledged (its entries are delivered again later), and the
        reader and helpers are cancelled without waiting past the same deadline."""
        stop = stop or asyncio.Event()
        await self.source.start()
        self._space = asyncio.Condition()
        queue: asyncio.Queue[list[RawEntry]] = asyncio.Queue(maxsize=4)
        self._reader = asyncio.create_task(self._read(queue))
        helpers = [asyncio.create_task(self._follow()), asyncio.create_task(self._stats())]
        if self._shared is not None:
            helpers.append(asyncio.create_task(self._watch_rivals(self._shared)))
        stopping = asyncio.create_task(stop.wait())
        self._carry = None
        try:
            while not stop.is_set():
                entries = await self._take(queue, stopping)
                if entries is not None:
                    await self._step(entries, queue, stopping)
                elif (
                    self._finishing is None
                    and until_idle is not None
                    and await self._drained(until_idle)
                ):
                    break
            if self._finishing is not None:  # stopping: the batch in progress may commit
                await self._wait_finished(queue, stopping, recover=False)
        finally:
            deadline = time.monotonic() + self.stop_timeout
            if self._finishing is not None:
                deadlines.abandon(self._finishing[0])
                self._finishing = None
            await self._stop_reader(self._reader, self.stop_timeout)
            for helper in [*helpers, stopping]:
                await deadlines.stop(helper, deadline - time.monotonic())
            with contextlib.suppress(Exception):
                left = max(0.1, deadline - time.monotonic())
                await deadlines.bounded(self._write_stats(0.0), left)
        return self.totals

    async def _take(
        self, queue: asyncio.Queue[list[RawEntry]], stopping: asyncio.Future[Any]
    ) -> list[RawEntry] | None:
        """The next batch's entries, or ``None`` when none came for a moment."""
        if self._carry is not None:
            entries, self._carry = self._carry, None
        else:
            try:
                entries = await asyncio.wait_for(queue.get(), 0.05)
            except TimeoutError:
                if self._finishing is not None and self._finishing[0].done():
                    await self._wait_finished(queue, stopping)
                elif self._finishing is None and self.processor.unsettled:
                    try:
                        await self.processor.settle()
                    except HybridServeError as exc:  # tried again when next idle
                        log.warning("stream %s: cannot settle view rows: %s", self.name, exc)
                return None
        # Reads that piled up while the last batch ran join this one (up to batch_size):
        # under a steady trickle, small batches would each pay the fixed costs (store
        # round trips, the model call) and wait behind one another in the queue.
        while self._careful == 0 and not queue.empty():
            more = queue.get_nowait()
            if len(entries) + len(more) > self.cfg.batch_size:
                self._carry = more
                break
            entries = entries + more
        return entries

    async def _step(
        self,
        entries: list[RawEntry],
        queue: asyncio.Queue[list[RawEntry]],
        stopping: asyncio.Future[Any],
    ) -> None:
        """Read and compute ``entries`` while the last batch finishes, then start finishing
        them. After a failure (``_careful``), one batch at a time: the last one first."""
        last = self._finishing
        prepared: Prepared | BaseException | None = None
        if last is not None and self._overlap():
            prepared = await self._prepare(entries, last[1], stopping)
        if last is not None:
            if not await self._wait_finished(queue, stopping) or stopping.done():
                return  # failed (what was read after it is dropped too), or stopping
            if isinstance(prepared, Prepared) and not last[1].settled:
                await self.processor.recompute(prepared)
        elif stopping.done():
            return
        if prepared is None:
            prepared = await self._prepare(entries, None, stopping)
        if isinstance(prepared, BaseException):
            await self._recover(prepared, queue, stopping)
        elif prepared is not None:
            self._finishing = (asyncio.create_task(self._finish(prepared)), prepared)

    def _overlap(self) -> bool:
        """Whether to compute the next batch while the last one commits. Not after a failure
        (``_careful``: one at a time), nor for a while after a commit conflict, nor while
        another consumer may commit the same entities (``_rival``): a batch computed ahead
        reads the store earlier than one computed after, so a rival's commits conflict with
        it more often, and one that commits back to back can starve the other consumer."""
        return self._careful == 0 and self._contended == 0 and not self._rival

    async def _watch_rivals(self, source: Shared) -> None:
        while True:
            try:
                self._rival = await source.shared()
            except Exception:  # cannot tell: assume a rival, keep watching
                self._rival = True
                log.debug("stream %s: cannot see the other consumers", self.name, exc_info=True)
            await asyncio.sleep(_RIVALS_EVERY)

    async def _prepare(
        self, entries: list[RawEntry], after: Prepared | None, stopping: asyncio.Future[Any]
    ) -> Prepared | BaseException | None:
        """``entries`` read and computed, what that raised, or ``None`` when ``stopping``
        came first (nothing of the batch is written: it is delivered again later)."""
        task = asyncio.create_task(self.processor.prepare(entries, after))
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            deadlines.abandon(task)
            raise
        if not task.done():
            deadlines.abandon(task)
            return None
        return task.exception() or task.result()

    async def _finish(self, prepared: Prepared) -> BatchResult:
        """Write, commit and acknowledge a prepared batch, then count it and make room."""
        result = await self.processor.finish(prepared)
        self._record(result)
        self._failures = 0
        self._contended = _CALM if result.conflicts else max(0, self._contended - 1)
        self._careful = max(0, self._careful - len(prepared.entries))
        await self._release(len(prepared.entries))
        return result

    async def _wait_finished(
        self,
        queue: asyncio.Queue[list[RawEntry]],
        stopping: asyncio.Future[Any],
        *,
        recover: bool = True,
    ) -> bool:
        """Wait for the finishing batch; whether it committed. One that failed is recovered
        from (``recover``; else logged). Once ``stopping`` came, a batch that does not commit
        within ``stop_timeout`` is left unacknowledged: it is delivered again later."""
        assert self._finishing is not None
        task, self._finishing = self._finishing[0], None
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait({task}, timeout=self.stop_timeout)
        except asyncio.CancelledError:
            deadlines.abandon(task)
            raise
        if not task.done():
            deadlines.abandon(task)
            log.warning(
                "stream %s: stopping; a batch did not commit within %gs and is left unacknowledged",
                self.name,
                self.stop_timeout,
            )
            return False
        exc = task.exception()
        if exc is None:
            return True
        if recover:
            await self._recover(exc, queue, stopping)
        else:
            log.warning("stream %s: a batch failed while stopping (%s)", self.name, exc)
        return False

    async def _recover(
        self,
        exc: BaseException,
        queue: asyncio.Queue[list[RawEntry]],
        stopping: asyncio.Future[Any],
    ) -> None:
        """After a failed batch: drop what was read ahead, rewind the source and start a new
        reader; the unacknowledged entries are then re-read one at a time."""
        self._failures += 1
        self.totals.failures += 1
        self.metrics.failures.inc()
        log.warning(
            "stream %s: batch failed (%s); rewinding",
            self.name,
            exc,
            exc_info=not isinstance(exc, HybridServeError),
        )
        await self._stop_reader(self._reader, self.stop_timeout)
        self._carry = None
        while not queue.empty():
            queue.get_nowait()
        # After a failure the entries come back one at a time, each delivery counted;
        # contention is not the entries' fault: they come back as a batch.
        contention = isinstance(exc, CommitContention)
        self._careful = 0 if contention else max(1, self._in_flight)
        if contention:
            self._contended = _CALM
        await self._release(self._in_flight)
        if self._rewinds is not None:  # else the broker redelivers them itself
            self._rewinds.rewind()
        await asyncio.wait({stopping}, timeout=min(2.0, 0.02 * 2**self._failures))
        self._reader = asyncio.create_task(self._read(queue))

    async def _drained(self, until_idle: float) -> bool:
        """Whether reads came back empty for ``until_idle`` seconds with nothing in flight,
        and nothing is pending in the group: entries a dead consumer left pending are work
        left to do (reclaimed once idle for ``claim_idle``), not idleness."""
        empty, at = self._empty_since, time.monotonic()
        if empty is None or self._in_flight or at - empty < until_idle:
            return False
        if at < self._next_pending_check:
            return False
        self._next_pending_check = at + 0.5
        if self._measured is None:
            return True
        try:
            info = await self._measured.info()
        except HybridServeError as exc:
            log.warning("stream %s: cannot see what is pending: %s", self.name, exc.message)
            return False
        elsewhere = info.pending_elsewhere or 0
        own = (info.pending or 0) - elsewhere
        if info.lag:  # not delivered yet (a Kafka consumer still joining its group, say)
            return False
        if not elsewhere and not own:
            return True
        if own and self._rewinds is not None:  # pending here yet not in flight: a lost read
            self._rewinds.rewind()
        if not self._waiting_logged:
            self._waiting_logged = True
            log.info(
                "stream %s: idle, but %d entries are pending on other consumers; they are "
                "reclaimed once idle for %gs",
                self.name,
                elsewhere,
                self.cfg.claim_idle,
            )
        self._claim_soon = True
        return False

    async def _stop_reader(self, reader: asyncio.Task[None], seconds: float) -> None:
        if not await deadlines.stop(reader, seconds):
            log.warning("stream %s: the reader did not stop within %gs", self.name, seconds)

    async def _release(self, n: int) -> None:
        async with self._space:
            self._in_flight -= n
            self.metrics.in_flight.set(self._in_flight)
            self._space.notify_all()

    async def _read(self, queue: asyncio.Queue[list[RawEntry]]) -> None:
        cfg, source = self.cfg, self.source
        claim_every = max(0.5, min(cfg.claim_idle / 2, 10.0))
        last_claim = 0.0
        while True:
            async with self._space:
                # After a failure, one entry at a time, each processed before the next read.
                # While re-reading its own unacknowledged entries (after a restart), one batch
                # at a time: each re-read counts as a delivery, and entries read ahead by a
                # consumer that is then killed again would reach ``max_deliveries`` (and the
                # dead-letter stream as poison) without ever having been attempted.
                limit = (
                    1
                    if self._careful > 0
                    else cfg.batch_size
                    if self._rewinds is not None and self._rewinds.recovering
                    else cfg.max_in_flight
                )
                await self._space.wait_for(lambda: self._in_flight < limit)  # noqa: B023
                room = limit - self._in_flight
            n = min(cfg.batch_size, room)
            entries: list[RawEntry] = []
            started = time.monotonic()
            try:
                if self._reclaims is not None and (
                    self._claim_soon or started - last_claim >= claim_every
                ):
                    last_claim, self._claim_soon = started, False
                    entries = await self._reclaims.claim_stale(cfg.claim_idle, n)
                    if len(entries) == n:  # there may be more: claim again on the next read
                        last_claim = 0.0
                if not entries:
                    entries = await source.read(n, cfg.block)
            except HybridServeError as exc:  # the source is down: keep trying, slowly
                log.warning("stream %s: read failed: %s", self.name, exc.message)
                await asyncio.sleep(1.0)
                continue
            if not entries:
                if self._empty_since is None:
                    self._empty_since = started
                rest = cfg.block - (time.monotonic() - started)
                if rest > 0:
                    await asyncio.sleep(rest)  # sources that do not block (replay)
                continue
            self._empty_since = None
            async with self._space:
                self._in_flight += len(entries)
                self.metrics.in_flight.set(self._in_flight)
            self.metrics.read.inc(len(entries))
            await queue.put(entries)

    def _record(self, r: BatchResult) -> None:
        t, m = self.totals, self.metrics
        t.batches += 1
        t.conflicts += r.conflicts
        t.add(r)
        t.dead += r.late  # late events are dead-lettered too
        m.batch_size.observe(r.read)
        m.scored.inc(r.scored)
        m.duplicates.inc(r.duplicates)
        m.late.inc(r.late)
        m.dead.inc(r.dead + r.late)
        m.not_scored.inc(r.score_errors)
        m.failed_alone.inc(r.failed)
        m.conflicts.inc(r.conflicts)
        m.event_latency.observe_many(r.event_lag)
        m.read_latency.observe_many(r.read_lag)

    # -- following aliases, publishing stats ---------------------------------------------

    async def refresh_model(self) -> str | None:
        """Swap in the version the route's alias points at now; return a line if it moved."""
        scorer = self.processor.scorer
        route = self.cfg.route
        if scorer is None or route is None:
            return None
        ref = ModelRef.parse(self.services.project.route(route).model)
        if ref.alias is None:
            return None
        registry = self.services.registry
        version = await asyncio.to_thread(registry.resolve_version, ref.name, ref.alias)
        if version == scorer.runtime.version:
            return None
        new = await asyncio.to_thread(self.services.scorer, route, f"{ref.name}/{version}")
        self.processor.scorer = new
        self.metrics.model_version.set(version)
        line = f"stream {self.name}: {ref} moved from version {scorer.runtime.version} to {version}"
        log.info(line)
        return line

    async def _follow(self) -> None:
        while self.poll_interval > 0:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.refresh_model()
            except Exception:  # keep following even if one poll fails
                log.exception("stream %s: model refresh failed", self.name)

    async def _stats(self) -> None:
        last, last_t = 0, time.monotonic()
        while True:
            await asyncio.sleep(self.stats_interval)
            t = time.monotonic()
            rate = (self.totals.read - last) / max(1e-9, t - last_t)
            last, last_t = self.totals.read, t
            try:
                await self._write_stats(rate)
                if self._measured is not None:
                    info = await self._measured.info()
                    if info.lag is not None:
                        self.metrics.lag.set(info.lag)
            except Exception:
                log.exception("stream %s: stats update failed", self.name)

    async def _write_stats(self, rate: float) -> None:
        at = now()
        body = {"consumer": self.consumer, "events_per_s": round(rate, 1), "updated_at": at}
        body.update({f.name: getattr(self.totals, f.name) for f in fields(Totals)})
        key = f"sx:{self.name}:{self.consumer}"
        await self.services.online_kv.put_many([Entry(key, orjson.dumps(body), at, at + 86400)])

    async def close(self) -> None:
        await self.state.close()
        await self.io.close()
