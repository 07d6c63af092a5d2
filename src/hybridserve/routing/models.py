"""The models a server runs: one Scorer and one MicroBatcher per version, following aliases.

At start-up every model a route names (primary, canary, shadow, fallback models) is loaded,
and a missing one fails the start with a clear message. While serving, a background task asks
the registry every few seconds where each alias points; when an alias moves, the new version
is loaded off the event loop and swapped in. A request holds the :class:`LoadedModel` it
started with, so in-flight work finishes on the old version, and every record names the
version that made it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from statistics import median
from typing import TYPE_CHECKING

import numpy as np

from hybridserve.batching import MicroBatcher
from hybridserve.errors import HybridServeError
from hybridserve.registry.refs import ModelRef
from hybridserve.runtimes.threads import limit_threads
from hybridserve.scoring import Scorer

if TYPE_CHECKING:
    from hybridserve.observability.metrics import Metrics
    from hybridserve.services import Services

log = logging.getLogger("hybridserve.models")


@dataclass(slots=True, frozen=True)
class LoadedModel:
    ref: str
    """The reference as configured (``fraud@production``)."""
    scorer: Scorer
    batcher: MicroBatcher
    label: str = field(init=False, compare=False)
    """``name/version``, made once: every answer's metrics and headers use it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", f"{self.name}/{self.version}")

    @property
    def name(self) -> str:
        return self.scorer.runtime.name

    @property
    def version(self) -> int:
        return self.scorer.runtime.version


def route_refs(services: Services, route: str) -> dict[str, str]:
    """Role -> model reference for everything a route may call."""
    cfg = services.project.route(route)
    refs = {"primary": cfg.model}
    if cfg.canary is not None:
        refs["canary"] = cfg.canary.model
    if cfg.shadow is not None:
        refs["shadow"] = cfg.shadow.model
    for i, step in enumerate(cfg.fallback):
        model = getattr(step, "model", None)
        if model is not None:
            refs[f"fallback{i}"] = model
    return refs


class ModelManager:
    def __init__(
        self,
        services: Services,
        metrics: Metrics,
        *,
        max_batch_size: int = 64,
        poll_interval: float = 2.0,
        threads: int = 2,
        execution: str = "auto",
        inline_below: float = 0.010,
    ) -> None:
        self.execution = execution
        self.inline_below = inline_below
        self.services = services
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.poll_interval = poll_interval
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="hs-model")
        self._batchers: dict[str, MicroBatcher] = {}
        self._current: dict[tuple[str, str], LoadedModel] = {}
        self._task: asyncio.Task[None] | None = None

    # -- loading ---------------------------------------------------------------------

    def load_all(self) -> None:
        """Load every model of every route; raise with every problem found."""
        threads = self.services.project.server.model_threads
        if threads is not None:
            # Process-wide and kept: this process serves; batch runs have their own processes.
            limit_threads(threads)
            log.info("model calls use at most %d thread(s) each (server.model_threads)", threads)
        problems = []
        for route in self.services.project.routes:
            for role, ref in route_refs(self.services, route).items():
                try:
                    self._install(route, role, self._load(route, ref))
                except HybridServeError as exc:
                    problems.append(f"routes.{route}.{role}: {ref}: {exc.message}")
        if problems:
            raise HybridServeError("cannot start: " + "; ".join(problems))

    def _load(self, route: str, ref: str, version: int | None = None) -> LoadedModel:
        registry = self.services.registry
        mv = registry.get(ref if version is None else f"{ModelRef.parse(ref).name}/{version}")
        scorer = Scorer(self.services.project, route, registry.load(mv.ref))
        batcher = self._batchers.get(mv.ref)
        if batcher is None:
            child_rows = self.metrics.batch_size.labels(mv.ref)
            child_time = self.metrics.model_seconds.labels(mv.ref)

            def observe(rows: int, seconds: float) -> None:
                child_rows.observe(rows)
                child_time.observe(seconds)

            runtime = scorer.runtime
            proba = runtime.task == "classification"
            inline = self._inline(mv.ref, scorer)
            batcher = MicroBatcher(
                lambda m: runtime.predict(m, probabilities=proba),
                max_batch_size=self.max_batch_size,
                executor=self._executor,
                observe=observe,
                name=mv.ref,
                inline=inline,
            )
            self._batchers[mv.ref] = batcher
        return LoadedModel(ref, scorer, batcher)

    def _inline(
        self, ref: str, scorer: Scorer, clock: Callable[[], float] = time.perf_counter
    ) -> bool:
        """Run this model's calls on the event loop? Decided once, at load, and logged.

        ``auto`` times a full batch 11 times and takes the fastest: one timing of one batch
        (as before) ranged 1.4-3.4 ms over starts on one machine and picked a different mode
        from start to start when compared with 2 ms. The threshold (``inline_below``, 10 ms by
        default) is far from where fast tree models land, so the choice is the same on every
        start.
        """
        if self.execution != "auto":
            log.info("%s: model calls run %s (server.model_execution)", ref, self.execution)
            return self.execution == "inline"
        times = self._warm_up(scorer, clock=clock)
        if not times:
            log.info("%s: the model rejects a batch of zeros; model calls run in a thread", ref)
            return False
        # The fastest call is the model's own cost: a busy machine only ever adds to it
        # (measured: a median of 54 ms and a fastest of 0.9 ms for the same model while two
        # workers started side by side), so it is what decides.
        took = min(times)
        inline = took < self.inline_below
        log.info(
            "%s: a batch of %d takes %.2f ms (fastest of %d; median %.2f, slowest %.2f ms), "
            "%s %.1f ms: model calls run %s",
            ref,
            self.max_batch_size,
            took * 1000,
            len(times),
            median(times) * 1000,
            max(times) * 1000,
            "under" if inline else "not under",
            self.inline_below * 1000,
            "inline" if inline else "in a thread",
        )
        return inline

    def _warm_up(
        self, scorer: Scorer, calls: int = 11, clock: Callable[[], float] = time.perf_counter
    ) -> list[float]:
        """Time full batches before serving (also warms the model's caches); [] if it fails."""
        width = len(scorer.names)
        matrix = np.zeros((self.max_batch_size, width), dtype=np.float64)
        times = []
        for n in range(calls + 2):
            started = clock()
            try:
                scorer.runtime.predict(matrix)
            except Exception:  # a model that rejects zeros: assume it is slow, use a thread
                return []
            if n >= 2:  # the first calls fill caches
                times.append(clock() - started)
        return times

    def _install(self, route: str, role: str, model: LoadedModel) -> None:
        self._current[(route, role)] = model
        self.metrics.set_model(route, role, model.name, model.version)

    def load_version(self, route: str, name: str, version: int) -> LoadedModel:
        """Load ``name/version`` for ``route`` (a rollout's candidate: no alias to follow)."""
        return self._load(route, f"{name}/{version}")

    def install(self, route: str, role: str, model: LoadedModel) -> None:
        """Serve ``model`` as ``route``'s ``role`` (listed, and in ``hybridserve_model_info``)."""
        self._install(route, role, model)

    def uninstall(self, route: str, role: str) -> None:
        model = self._current.pop((route, role), None)
        if model is not None:
            self.metrics.model_info.remove(route, role, model.name, str(model.version))

    # -- serving ---------------------------------------------------------------------

    def get(self, route: str, role: str = "primary") -> LoadedModel | None:
        return self._current.get((route, role))

    def loaded(self) -> list[tuple[str, str, LoadedModel]]:
        return [(route, role, m) for (route, role), m in self._current.items()]

    def by_version(self, name: str, version: int | None = None) -> LoadedModel | None:
        """A loaded model by name (and version); the newest loaded when no version is given."""
        found = [
            m
            for m in self._current.values()
            if m.name == name and (version is None or m.version == version)
        ]
        return max(found, key=lambda m: m.version) if found else None

    # -- following aliases -----------------------------------------------------------

    async def refresh(self) -> list[str]:
        """Reload what moved; return a line per change."""
        changes = []
        for (route, role), model in list(self._current.items()):
            ref = ModelRef.parse(model.ref)
            if ref.alias is None:
                continue
            try:
                version = await asyncio.to_thread(
                    self.services.registry.resolve_version, ref.name, ref.alias
                )
                if version == model.version:
                    continue
                new = await asyncio.to_thread(self._load, route, model.ref, version)
            except HybridServeError as exc:
                log.warning("cannot follow %s for %s/%s: %s", model.ref, route, role, exc.message)
                continue
            self._install(route, role, new)
            changes.append(f"{route}/{role}: {model.label} -> {new.label}")
            log.info("route %s %s now on %s (was %s)", route, role, new.label, model.label)
        return changes

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.refresh()
            except Exception:  # keep following even if one poll fails
                log.exception("model refresh failed")

    def start(self) -> None:
        if self.poll_interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for batcher in self._batchers.values():
            await batcher.close()
        self._executor.shutdown(wait=False)
