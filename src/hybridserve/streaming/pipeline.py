"""One micro-batch, from raw entries to committed effects, then the acknowledgement.

The order is what makes redelivery safe (at-least-once in, effectively-once out):

1. dead-letter entries that were delivered too often (poison) or do not validate;
2. drop events already committed (the seen-set) or repeated within the batch;
3. load the touched entities' window state and apply each event in stream order; an event
   beyond the allowed lateness is dead-lettered as late and changes nothing;
4. score one row per applied event, with the window values right after that event: so an
   event's score does not depend on where batch boundaries fell, and a redone batch scores
   exactly the same. Events whose rows the Scorer rejects (a missing stored feature, say)
   are dead-lettered with its reason and the batch is redone without them, before anything
   is written, so they change nothing;
5. write the window features (``as_of`` = the entity's watermark) and each entity's newest
   prediction (precedence on ``as_of``), emit one output per event;
6. commit state + seen-set (+ outputs on Redis) with a version check; on a conflict (another
   consumer got there first) reload and redo; only then acknowledge.

Every write before the commit is idempotent (compare-and-set on ``as_of``, or once per id), so
a crash anywhere leaves nothing that a redo would write twice.

Steps 1-4 write nothing (:meth:`BatchProcessor.prepare`); 5-6 and the acknowledgement are
:meth:`BatchProcessor.finish`. The consumer prepares the next batch while the last finishes,
on top of the last one's uncommitted states (see :class:`BatchProcessor`).

A batch whose computation raises (decoding a state, the windows, the model: the model crashes
on one row, say) is split in halves, and each half processed on its own, down to single
events: the events that fail alone are dead-lettered with their error, and their neighbours
are committed. A store, source or network failure is not split, and neither it nor a batch
of which nothing goes through is shown to be the events' fault: the batch fails as a whole,
nothing is acknowledged and the source redelivers it (an entry still failing after
``max_deliveries`` is dead-lettered as poison, with its last error; deliveries that ended
in commit contention do not count, as other consumers caused them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from hybridserve.errors import StoreError
from hybridserve.quality.log import log_records
from hybridserve.records import PredictionRecord, now
from hybridserve.scoring import Scorer
from hybridserve.services import Services
from hybridserve.streaming.events import Event, RawEntry, decode_batch
from hybridserve.streaming.sources import DeadLetter, StreamIO, stream_config
from hybridserve.streaming.state import Output, StateStore
from hybridserve.streaming.windows import (
    BatchWindows,
    EntityState,
    WindowEvent,
    WindowSpec,
    stream_position,
)

_ATTEMPTS = 8
_BACKOFF = 0.002
"""Seconds: a redo after the k-th conflict waits a random share of ``_BACKOFF * 2**k``."""


class CommitContention(StoreError):
    """A batch's commit kept conflicting with other consumers' commits (see ``_commit``).

    Not a failure of the entries: the consumer redelivers the batch as a whole, not one entry
    at a time as after a store failure.
    """


log = logging.getLogger("hybridserve.stream")


class _EventFault(Exception):
    """Computing on the batch's events (decoding states, windows, the model) raised ``cause``.

    Only these split a batch: a store, source or network failure is nothing the events did,
    and fails the batch whole (to be redelivered) rather than dead-lettering good events.
    """

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


@contextlib.contextmanager
def _computing() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        raise _EventFault(exc) from exc


@dataclass(slots=True)
class EventCounts:
    """What happened to events: one micro-batch's, or a consumer's running totals."""

    read: int = 0
    applied: int = 0
    scored: int = 0
    duplicates: int = 0
    late: int = 0
    dead: int = 0

    def add(self, other: EventCounts) -> None:
        for name in EVENT_COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


EVENT_COUNTS = ("read", "applied", "scored", "duplicates", "late", "dead")


@dataclass(slots=True)
class BatchResult(EventCounts):
    score_errors: int = 0
    """Events the Scorer rejected (dead-lettered, and counted in ``dead`` too)."""
    failed: int = 0
    """Events that failed alone when the batch was split (dead-lettered, in ``dead`` too)."""
    conflicts: int = 0
    event_lag: list[float] = field(default_factory=list)
    """Seconds from each scored event's time to its commit."""
    read_lag: list[float] = field(default_factory=list)
    """Seconds from each scored event's read to its commit."""


def output_payload(r: PredictionRecord) -> bytes:
    """The output entry of one scored event: deterministic (no wall-clock time in it)."""
    return orjson.dumps(
        {
            "event_id": r.event_id,
            "entity": r.entity,
            "route": r.route,
            "as_of": r.as_of,
            "score": r.score,
            "label": r.label,
            "model": r.model,
            "model_version": r.model_version,
        }
    )


Taken = dict[str, tuple[int, EntityState]]
"""entity -> (version, state): states an attempt leaves to the batch computed after it."""


@dataclass(slots=True, eq=False)
class _Attempt:
    """One attempt at a batch's events: what it read and computed, nothing written yet."""

    entities: list[str]
    versions: list[int]
    """The version of each state in ``states``: the one its commit expects to find."""
    states: list[EntityState]
    fresh: list[Event]
    applied: list[Event]
    late: list[DeadLetter]
    duplicates: int
    records: list[PredictionRecord] | dict[int, str]
    windows: BatchWindows
    stored: dict[str, dict[str, Any]]
    touched: list[int]
    view_rows: list[tuple[str, dict[str, Any], float]]
    writes: list[tuple[str, int, bytes]]
    ahead: Taken | None = None
    """Set on an attempt computed ahead (:meth:`BatchProcessor.prepare`): its states as they
    are once it commits, for the next batch, which takes those it needs before its reads."""


@dataclass(slots=True, eq=False)
class Prepared:
    """A micro-batch read and computed, nothing of it written (:meth:`BatchProcessor.prepare`)."""

    entries: list[RawEntry]
    live: list[RawEntry]
    events: list[Event]
    dead: list[DeadLetter]
    res: BatchResult
    scorer: Scorer | None
    first: _Attempt | _EventFault | None = None
    """The first attempt at all of ``events``, computed ahead (or what computing it raised)."""
    after: Prepared | None = None
    """The batch this one was computed on top of before that one committed."""
    settled: bool | None = None
    """Whether ``first`` committed as computed; ``None`` until :meth:`BatchProcessor.finish`."""


class BatchProcessor:
    """Processes micro-batches: :meth:`process` one at a time, or two overlapped, the next
    batch read and computed (:meth:`prepare`) while the last one writes and commits
    (:meth:`finish`).

    A batch computed ahead starts from the states the last batch leaves (``_Attempt.ahead``)
    and treats the last batch's events as seen, as if that batch had committed already. It
    is only committed as computed if the last batch did commit as computed
    (:attr:`Prepared.settled`); else it is computed again from what is stored. Its commit
    also checks each state's version against the one it started from, so a state that
    another consumer moved in between fails the commit (and the batch is redone) as in a
    batch processed alone.
    """

    def __init__(
        self,
        services: Services,
        name: str,
        io: StreamIO,
        state: StateStore,
        scorer: Scorer | None,
    ) -> None:
        self.services, self.name, self.state = services, name, state
        self.source, self.outputs, self.dead_letters = io.source, io.outputs, io.dead_letters
        self.cfg = stream_config(services.project, name)
        self.spec = WindowSpec(self.cfg)
        self.view = self.cfg.windows.view if self.cfg.windows is not None else None
        self.scorer = scorer
        route = self.cfg.route
        wanted = services.project.route_features(route) if route else {}
        self.other_views = {v: names for v, names in wanted.items() if v != self.view}
        # The stream's own window features the route reads: scored with their values right
        # after each event. A route that reads none of them gets none (and none computed).
        self.window_names = tuple(wanted.get(self.view, ())) if self.view else ()
        # entity -> (state version, that version's state, decoded), most recent last. The
        # state is re-read every batch (another consumer may have moved it); when the version
        # read is the one this consumer committed, the decoded object is used as is.
        self._decoded: Taken = {}
        self.unsettled: set[str] = set()
        """Entities whose view rows an attempt wrote and then failed to commit: rewritten from
        their committed state (and their version checked) by every attempt until one commits,
        even if none of its events is theirs. Else a row from a stale state could stay: another
        consumer that took over some of these events (claimed them while this one retried)
        wrote its row first, ours replaced it (same watermark), and the redo, finding those
        events done, would leave the entity alone. Kept across batches: a batch that gives up
        on contention is redelivered, and the events may have gone to the other consumer."""
        self.max_decoded = 200_000
        # entry id -> the error it last failed with, for its poison dead letter.
        self._last_errors: dict[str, str] = {}
        self.max_last_errors = 10_000
        # entry id -> deliveries that ended in commit contention: other consumers' doing, not
        # the entry's, so they do not count toward ``max_deliveries``. (Counted before, a
        # batch that gave up five times was dead-lettered whole as poison: seen as 1,000
        # events without outputs in a two-consumer benchmark.)
        self._excused: dict[str, int] = {}
        services.prediction_log.start_for("stream")

    async def process(self, entries: list[RawEntry]) -> BatchResult:
        """Process, commit and acknowledge ``entries``; raise (acking nothing) on failure."""
        return await self.finish(await self.prepare(entries))

    async def prepare(self, entries: list[RawEntry], after: Prepared | None = None) -> Prepared:
        """Read and compute ``entries``; write nothing. ``after``: the batch before, prepared
        and not finished yet, whose commit this one is computed on top of; finish that one
        first (:meth:`finish` checks)."""
        at = now()
        cfg = self.cfg
        res = BatchResult(read=len(entries))
        dead: list[DeadLetter] = []
        events: list[Event] = []
        ids: set[str] = set()
        live: list[RawEntry] = []
        excused = self._excused
        for entry in entries:
            if entry.deliveries - excused.get(entry.id, 0) > cfg.max_deliveries:
                reason = f"poison: delivered {entry.deliveries} times (max {cfg.max_deliveries})"
                last = self._last_errors.pop(entry.id, None)
                dead.append((entry, reason if last is None else f"{reason}; last error: {last}"))
            else:
                live.append(entry)
        for entry, ev in zip(live, decode_batch(cfg, live, at), strict=True):
            if isinstance(ev, str):
                dead.append((entry, ev))
            elif ev.event_id in ids:
                res.duplicates += 1
            else:
                ids.add(ev.event_id)
                events.append(ev)
        p = Prepared(entries, live, events, dead, res, self.scorer, after=after)
        base = after.first if after is not None else None
        await self._compute_first(p, base if isinstance(base, _Attempt) else None)
        return p

    async def settle(self) -> bool:
        """Rewrite the view rows of the :attr:`unsettled` entities from their committed
        states, version checked, as a batch without events; whether none is left. The
        consumer calls this when idle: a batch that gave up on contention leaves rows from a
        stale state, and if no later batch of this consumer commits, they would stay."""
        if self.unsettled:
            await self._apply([], self.scorer, BatchResult())
        return not self.unsettled

    async def recompute(self, p: Prepared) -> None:
        """Compute ``p`` again from what is stored: the batch it was computed after did not
        commit as computed. (Else its :meth:`finish` would, but only after the batch after it
        had been computed on top of it, and so on.)"""
        p.after = None
        await self._compute_first(p, None)

    async def _compute_first(self, p: Prepared, base: _Attempt | None) -> None:
        if p.events:
            try:
                p.first = await self._compute(p.events, p.scorer, base, ahead=True)
            except _EventFault as fault:
                p.first = fault

    async def finish(self, p: Prepared) -> BatchResult:
        """Write, commit and acknowledge a prepared batch; raise (acking nothing) on failure.
        The batch it was computed after must have finished (committed or failed) first."""
        after, p.after = p.after, None
        first = p.first
        if after is not None:
            assert after.settled is not None, "the batch before is not finished"
            if not after.settled:  # computed on states that did not commit as computed
                first = None
        p.settled = False
        res, events, excused = p.res, p.events, self._excused
        if p.dead:
            await self.dead_letters.dead_letter(p.dead)
        res.dead = len(p.dead)
        try:
            failed, settled = await self._isolate(events, p.scorer, res, first)
        except CommitContention:
            for entry in p.live:
                excused[entry.id] = excused.pop(entry.id, 0) + 1
            while len(excused) > self.max_last_errors:
                excused.pop(next(iter(excused)))
            raise
        if failed:
            if len(failed) == len(events):  # nothing went through: fail the batch
                for ev, exc in failed:
                    self._remember(ev.entry.id, exc)
                raise failed[0][1]
            letters = [(ev.entry, f"failed: {_describe(exc)}") for ev, exc in failed]
            log.warning(
                "stream %s: %d of %d events failed alone and are dead-lettered (first: %s)",
                self.name,
                len(failed),
                len(events),
                letters[0][1],
            )
            await self.dead_letters.dead_letter(letters)
            res.failed += len(failed)
            res.dead += len(failed)
        p.settled = settled or not events
        for entry in p.entries:
            self._last_errors.pop(entry.id, None)
            excused.pop(entry.id, None)
        await self.source.ack([e.id for e in p.entries])
        return res

    def _remember(self, entry_id: str, exc: Exception) -> None:
        errors = self._last_errors
        errors.pop(entry_id, None)
        errors[entry_id] = _describe(exc)
        while len(errors) > self.max_last_errors:
            errors.pop(next(iter(errors)))

    async def _isolate(
        self,
        events: list[Event],
        scorer: Scorer | None,
        res: BatchResult,
        first: _Attempt | _EventFault | None = None,
    ) -> tuple[list[tuple[Event, Exception]], bool]:
        """Commit ``events``, or if computing on them raises, each half on its own (in stream
        order, so windows see the same order), down to single events; return those that fail
        alone, with their error, and whether ``first`` (an attempt computed ahead) was the
        one committed."""
        try:
            return [], await self._commit(events, scorer, res, first)
        except _EventFault as fault:
            if len(events) <= 1:
                return [(ev, fault.cause) for ev in events], False
        mid = len(events) // 2
        head, _ = await self._isolate(events[:mid], scorer, res)
        tail, _ = await self._isolate(events[mid:], scorer, res)
        return head + tail, False

    async def _commit(
        self,
        events: list[Event],
        scorer: Scorer | None,
        res: BatchResult,
        first: _Attempt | _EventFault | None = None,
    ) -> bool:
        """Apply and commit ``events``: redone on a commit conflict, and redone without the
        events whose rows the Scorer rejects (dead-lettered with its reason). The first try
        is ``first`` when given; return whether that one committed."""
        conflicts = 0
        attempt = first
        while True:
            if isinstance(attempt, _EventFault):
                raise attempt
            outcome = await self._apply(events, scorer, res, attempt)
            if outcome is True:
                return attempt is not None and attempt is first
            attempt = None
            if outcome is False:
                conflicts += 1
                res.conflicts += 1
                if conflicts >= _ATTEMPTS:
                    raise CommitContention(
                        f"stream {self.name}: gave up after {_ATTEMPTS} commit conflicts"
                    )
                # Two consumers that conflicted redo at once and conflict again, in step, until
                # they give up (measured: both gave up together 17 s into a two-consumer run).
                # A random wait puts one of them first.
                await asyncio.sleep(random.uniform(0, _BACKOFF * 2**conflicts))
                continue
            log.warning(
                "stream %s: %d events not scored, dead-lettered (first: %s)",
                self.name,
                len(outcome),
                outcome[0][1],
            )
            await self.dead_letters.dead_letter(outcome)
            res.score_errors += len(outcome)
            res.dead += len(outcome)
            rejected = {id(entry) for entry, _ in outcome}
            events = [ev for ev in events if id(ev.entry) not in rejected]

    async def _compute(
        self,
        events: list[Event],
        scorer: Scorer | None,
        base: _Attempt | None = None,
        *,
        ahead: bool = False,
    ) -> _Attempt:
        """Read the state, seen-set and stored features ``events`` need, and compute their
        windows, scores and writes. ``base``: an attempt not committed yet; this one starts
        from the states it leaves and takes its events as seen. ``ahead``: keep this one's
        states in ``_Attempt.ahead`` for the batch computed next."""
        spec = self.spec
        # Three independent reads at once: which events were applied already, the entities'
        # window state, and (for scoring) their features from the other views. State is
        # loaded for every entity in the batch; one whose events all turn out to be
        # duplicates is left unchanged.
        unsettled = self.unsettled
        entities = list(dict.fromkeys([*(ev.entity for ev in events), *unsettled]))
        # Taken before the first await: the batch before moves what is left of its states to
        # the decoded cache once it commits.
        taken: Taken = {}
        skip: set[str] = set()
        if base is not None:
            left = base.ahead or {}
            taken = {e: left.pop(e) for e in entities if e in left}
            skip = {ev.event_id for ev in base.fresh}
        flags, loaded, stored = await asyncio.gather(
            self.state.seen([ev.event_id for ev in events]),
            self.state.load(entities),
            self._stored_features(scorer, entities),
        )
        fresh = [
            ev
            for ev, seen in zip(events, flags, strict=True)
            if not seen and ev.event_id not in skip
        ]
        duplicates = len(events) - len(fresh)
        states: list[EntityState] = []
        versions: list[int] = []
        has_state: list[bool] = []
        decoded = self._decoded
        names = self.window_names if scorer is not None else ()
        index = {e: i for i, e in enumerate(entities)}
        with _computing():
            for entity, (version, raw) in zip(entities, loaded, strict=True):
                # Taken out while in use: a failed attempt leaves no half-applied state behind.
                hit = taken.get(entity)
                if hit is not None and hit[0] >= version:  # the batch before's, as it commits
                    versions.append(hit[0])
                    states.append(hit[1])
                    has_state.append(hit[0] > 0)
                    continue
                hit = decoded.pop(entity, None)
                versions.append(version)
                has_state.append(raw is not None)
                if hit is not None and version > 0 and hit[0] == version:
                    states.append(hit[1])
                else:
                    states.append(spec.new_state() if raw is None else spec.loads(raw))
            windows = spec.apply_batch(
                states,
                [
                    WindowEvent(
                        index[ev.entity],
                        ev.event_id,
                        ev.time,
                        ev.values,
                        stream_position(ev.entry.id),
                        ev.entry.deliveries > 1,
                    )
                    for ev in fresh
                ],
                names,
            )
        applied: list[Event] = []
        late: list[DeadLetter] = []
        for ev, outcome, judged in zip(fresh, windows.outcomes, windows.judged, strict=True):
            if outcome == "applied":
                applied.append(ev)
            elif outcome == "late":
                reason = (
                    f"late: {(judged or 0.0) - ev.time:.3f}s behind the entity's watermark "
                    f"(allowed_lateness {self.cfg.allowed_lateness:g}s)"
                )
                late.append((ev.entry, reason))
            else:
                duplicates += 1
        records = await self._score(scorer, applied, windows.rows, stored)
        # An unsettled entity without a committed state (expired since) has nothing to rewrite.
        touched = [
            i
            for i, e in enumerate(entities)
            if windows.changed[i] or (e in unsettled and has_state[i])
        ]
        view_rows: list[tuple[str, dict[str, Any], float]] = []
        writes: list[tuple[str, int, bytes]] = []
        if isinstance(records, list):
            with _computing():
                view_rows = [
                    (entities[i], windows.finals[i], states[i].watermark or 0.0) for i in touched
                ]
                writes = [(entities[i], versions[i], spec.dumps(states[i])) for i in touched]
        attempt = _Attempt(
            entities, versions, states, fresh, applied, late, duplicates, records, windows,
            stored, touched, view_rows, writes,
        )  # fmt: skip
        if ahead:
            moved = set(touched)
            attempt.ahead = {
                e: (versions[i] + (1 if i in moved else 0), states[i])
                for i, e in enumerate(entities)
            }
        return attempt

    async def _apply(
        self,
        events: list[Event],
        scorer: Scorer | None,
        res: BatchResult,
        attempt: _Attempt | None = None,
    ) -> bool | list[DeadLetter]:
        """One attempt (``attempt`` when computed ahead, else computed now): ``True`` when
        committed, ``False`` on a commit conflict (the entities whose view rows it wrote join
        :attr:`unsettled`), or the events the Scorer rejected, with its reasons (nothing
        written then)."""
        if not events and not self.unsettled:
            return True
        a = attempt or await self._compute(events, scorer)
        records = a.records
        if not isinstance(records, list):  # rejected rows: redo without them
            a.ahead = None
            return [(a.applied[i].entry, f"not scored: {why}") for i, why in records.items()]
        entities, touched = a.entities, a.touched
        if a.late:
            await self.dead_letters.dead_letter(a.late)
        # The view's new rows and the predictions go to the store at the same time; both
        # land before the commit below makes the batch's state (and outputs) official.
        _, outputs = await asyncio.gather(self._write_view(a.view_rows), self._store(records))
        seen = [ev.event_id for ev in a.fresh]
        committed = not (a.writes or seen) or await self.state.commit(a.writes, seen, outputs)
        # From here to the end, nothing awaits: the next batch, computed ahead, takes its
        # states from ``ahead`` before or after this, never in between.
        ahead, a.ahead = a.ahead, None
        if not committed:
            self.unsettled.update(entities[i] for i in touched)
            return False
        self.unsettled.difference_update(entities)
        decoded = self._decoded
        if ahead is not None:  # the states the next batch did not take
            decoded.update(ahead)
        else:  # committed: the next batch starts from these objects
            moved = set(touched)
            for i, e in enumerate(entities):
                decoded[e] = (a.versions[i] + (1 if i in moved else 0), a.states[i])
        while len(decoded) > self.max_decoded:
            decoded.pop(next(iter(decoded)))
        done = now()
        res.applied += len(a.applied)
        res.late += len(a.late)
        res.duplicates += a.duplicates
        res.scored += len(records)
        res.event_lag += [done - ev.time for ev in a.applied]
        res.read_lag += [done - ev.entry.read_at for ev in a.applied]
        if self.services.prediction_log.stream and records:
            self._log(records, a.applied, a.windows.rows, a.stored, done)
        return True

    def _log(
        self,
        records: list[PredictionRecord],
        applied: list[Event],
        window_rows: list[dict[str, Any]],
        stored: dict[str, dict[str, Any]],
        done: float,
    ) -> None:
        """Offer the committed batch's scored events to the prediction log (sampled)."""
        features = [
            {**stored.get(ev.entity, {}), **w} for ev, w in zip(applied, window_rows, strict=True)
        ]
        latency = [(done - ev.entry.read_at) * 1000 for ev in applied]
        log_records(
            self.services.prediction_log, records, features, source="stream", latency_ms=latency
        )

    async def _stored_features(
        self, scorer: Scorer | None, entities: list[str]
    ) -> dict[str, dict[str, Any]]:
        """Scoring's features from views other than the stream's own (values only)."""
        if scorer is None or not self.other_views or not entities:
            return {}
        rows = await self.services.features.read_values(self.other_views, entities)
        return {e: values for e, (values, _) in zip(entities, rows, strict=True)}

    async def _write_view(self, rows: list[tuple[str, dict[str, Any], float]]) -> None:
        if self.view is not None and rows:
            await self.services.features.write(self.view, rows)

    async def _score(
        self,
        scorer: Scorer | None,
        applied: list[Event],
        window_rows: list[dict[str, Any]],
        stored: dict[str, dict[str, Any]],
    ) -> list[PredictionRecord] | dict[int, str]:
        """The applied events' records, or (position in ``applied`` -> reason) for the rows
        the Scorer rejected."""
        if scorer is None or not applied:
            return []
        row_of: list[int] | None = None
        if self.window_names:  # each event's row holds the windows right after it
            feature_rows = [
                {**stored.get(ev.entity, {}), **w}
                for ev, w in zip(applied, window_rows, strict=True)
            ]
        else:  # the route reads no window feature: an entity's events share its stored row
            index: dict[str, int] = {}
            row_of = [index.setdefault(ev.entity, len(index)) for ev in applied]
            feature_rows = [stored.get(e, {}) for e in index]
        with _computing():
            result = await asyncio.to_thread(
                scorer.score_rows,
                [ev.entity for ev in applied],
                feature_rows,
                as_of=[ev.time for ev in applied],
                source="stream",
                event_ids=[ev.event_id for ev in applied],
                row_of=row_of,
            )
        if result.errors:
            return {e.index: e.reason for e in result.errors}
        return result.records

    async def _store(self, records: list[PredictionRecord]) -> list[Output]:
        """Store the newest prediction per entity; the outputs of every record."""
        if not records:
            return []
        best: dict[str, PredictionRecord] = {}
        for r in records:
            b = best.get(r.entity)
            if b is None or r.as_of >= b.as_of:
                best[r.entity] = r
        await self.services.predictions.put(list(best.values()))
        outputs = [(r.event_id or "", output_payload(r)) for r in records]
        if not self.state.atomic_outputs:
            await self.outputs.emit(outputs)
        return outputs


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
