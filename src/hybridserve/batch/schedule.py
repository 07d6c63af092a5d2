"""Starting batch jobs on their cron ``schedule`` (``serve --scheduler``).

Each job's runs go to a process of the job's own, its runner (:mod:`.job_process`), started
by the job's first run and kept for the next: a run started in a new process spends its first
seconds importing the model's libraries, which the runner has done already. A crash or a
kill of a run never touches the server, and a killed run is resumed like any other. At most
one run per job at a time: a start that falls due while the job's previous run is still going
is skipped (and counted), not queued. Each runner's log is the job's ``scheduler.log``.

The clock, the sleep and the way a run is started are parameters, so tests drive the
scheduler with a fake clock and fake processes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from croniter import croniter  # type: ignore[import-untyped]

from hybridserve.batch.job_process import JobRunner
from hybridserve.config import Project
from hybridserve.errors import ConfigError

log = logging.getLogger("hybridserve.batch.schedule")


class RunProcess(Protocol):
    """The part of :class:`asyncio.subprocess.Process` the scheduler uses."""

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def terminate(self) -> None: ...


Spawn = Callable[[str], Awaitable[RunProcess]]


def next_fire(expr: str, after: float) -> float:
    """The first time strictly after ``after`` (epoch seconds, UTC) that ``expr`` matches."""
    return float(croniter(expr, after).get_next(float))


class Scheduler:
    """Starts each scheduled job of a project when its cron expression falls due."""

    def __init__(
        self,
        project: Project,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        spawn: Spawn | None = None,
        poll: float = 1.0,
    ) -> None:
        self.project = project
        self.schedules: dict[str, str] = {}
        for name, job in sorted(project.batch_jobs.items()):
            if job.schedule is None:
                continue
            if not croniter.is_valid(job.schedule):
                raise ConfigError(
                    f"batch_jobs.{name}.schedule: expected a cron expression "
                    f"(minute hour day month weekday), got {job.schedule!r}"
                )
            self.schedules[name] = job.schedule
        self.clock, self.sleep, self.poll = clock, sleep, poll
        self.spawn: Spawn = spawn or self._start
        self.runners: dict[str, JobRunner] = {}
        self.next_at: dict[str, float] = {}
        self.running: dict[str, RunProcess] = {}
        self.started: dict[str, int] = dict.fromkeys(self.schedules, 0)
        self.skipped: dict[str, int] = dict.fromkeys(self.schedules, 0)
        self._stopping = False

    async def tick(self) -> list[str]:
        """Start every job that is due now; return the names started."""
        at = self.clock()
        for name, proc in list(self.running.items()):
            if proc.returncode is not None:
                del self.running[name]
                level = logging.INFO if proc.returncode == 0 else logging.WARNING
                log.log(level, "batch job %s finished with exit code %s", name, proc.returncode)
        begun: list[str] = []
        for name, expr in self.schedules.items():
            due = self.next_at.setdefault(name, next_fire(expr, at))
            if at < due:
                continue
            self.next_at[name] = next_fire(expr, at)
            if name in self.running:
                self.skipped[name] += 1
                log.warning("batch job %s is due but its previous run is still going", name)
                continue
            self.running[name] = await self.spawn(name)
            self.started[name] += 1
            begun.append(name)
            log.info("started batch job %s", name)
        return begun

    async def run_forever(self) -> None:
        """Tick until :meth:`stop`; sleep until the next start (at most ``poll`` seconds)."""
        self._stopping = False
        while not self._stopping:
            await self.tick()
            wait = min([self.poll, *(t - self.clock() for t in self.next_at.values())])
            await self.sleep(max(0.0, wait))

    def stop(self) -> None:
        self._stopping = True

    async def close(self, timeout: float = 10.0) -> None:
        """Let running jobs finish for up to ``timeout`` seconds, then terminate them; end the
        runners.

        A terminated run is marked failed and resumes with ``batch run JOB --run-id ID``.
        """
        self.stop()
        procs = list(self.running.values())
        if procs:
            waits = [asyncio.ensure_future(p.wait()) for p in procs]
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for p in procs:
                if p.returncode is None:
                    p.terminate()
            if pending:
                await asyncio.wait(pending, timeout=timeout)
        runners, self.runners = list(self.runners.values()), {}
        await asyncio.gather(*(r.close(timeout) for r in runners))

    async def _start(self, job: str) -> RunProcess:
        runner = self.runners.get(job)
        if runner is None:
            source = self.project.source_file
            if source is None:
                raise ConfigError("the scheduler needs a project loaded from a file")
            log_dir = self.project.path(self.project.batch_jobs[job].runs_dir) / job
            runner = self.runners[job] = JobRunner(source, job, log_dir / "scheduler.log")
        return await runner.start_run()
