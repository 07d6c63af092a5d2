"""The scheduler starts due jobs, one run per job at a time (on a fake clock), through a runner
process per job that outlives its runs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from batch_helpers import job

from hybridserve.batch.job_process import RunHandle
from hybridserve.batch.manifest import runs
from hybridserve.batch.schedule import Scheduler
from hybridserve.config import Project, project_from_dict
from hybridserve.errors import ConfigError


class FakeProc:
    def __init__(self) -> None:
        self.returncode: int | None = None

    async def wait(self) -> int:
        return self.returncode or 0

    def terminate(self) -> None:
        self.returncode = -15


def project(**schedules: str | None) -> Project:
    return project_from_dict(
        {
            "entities": {"card": {"key": "card_id"}},
            "feature_views": {"v": {"entity": "card", "features": {"x": "float"}}},
            "routes": {"r": {"model": "m@production", "entity": "card", "features": ["v"]}},
            "batch_jobs": {
                name: {"route": "r", "input": {"view": "v"}, "schedule": expr}
                for name, expr in schedules.items()
            },
        }
    )


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


async def test_due_jobs_start_once_and_overlaps_are_skipped() -> None:
    now = [at("2026-01-01T01:59:00")]
    spawned: list[tuple[str, FakeProc]] = []

    async def spawn(job: str) -> FakeProc:
        spawned.append((job, FakeProc()))
        return spawned[-1][1]

    sched = Scheduler(
        project(nightly="0 2 * * *", quarterly="*/15 * * * *", manual=None),
        clock=lambda: now[0],
        spawn=spawn,
    )
    assert sorted(sched.schedules) == ["nightly", "quarterly"]
    assert await sched.tick() == []  # nothing due yet at 01:59
    now[0] = at("2026-01-01T02:00:00")
    assert sorted(await sched.tick()) == ["nightly", "quarterly"]
    assert await sched.tick() == []  # not twice for the same minute
    now[0] = at("2026-01-01T02:15:00")
    assert await sched.tick() == []  # quarterly's previous run is still going: skipped
    assert sched.skipped["quarterly"] == 1
    spawned[1][1].returncode = 0
    now[0] = at("2026-01-01T02:30:00")
    assert await sched.tick() == ["quarterly"]
    assert sched.started == {"nightly": 1, "quarterly": 2}
    await sched.close(timeout=0.1)
    assert all(p.returncode is not None for _, p in spawned)


async def test_run_forever_sleeps_until_the_next_start() -> None:
    now = [at("2026-01-01T01:58:30")]
    slept: list[float] = []
    started: list[str] = []

    async def spawn(job: str) -> FakeProc:
        started.append(job)
        proc = FakeProc()
        proc.returncode = 0
        return proc

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds
        if len(started) >= 2:
            sched.stop()

    sched = Scheduler(
        project(nightly="0 2 * * *"),
        clock=lambda: now[0],
        sleep=sleep,
        spawn=spawn,
        poll=60.0,
    )
    await sched.run_forever()
    assert started == ["nightly", "nightly"]
    assert now[0] == at("2026-01-02T02:00:00") + 60  # woke at each start, no busy loop
    assert len(slept) < 2 * 24 * 60 + 5


def test_bad_cron_expression_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"batch_jobs\.nightly\.schedule"):
        Scheduler(project(nightly="at two"))


@pytest.mark.slow
async def test_a_jobs_scheduled_runs_share_one_runner_that_a_kill_replaces(
    batch_project: Callable[..., Project],
) -> None:
    # Real runs: the runner process that the first run starts serves the next (its
    # forkserver warm); a runner killed between runs is replaced by the next due run; a run
    # that fails leaves its runner serving.
    proj = batch_project(
        {
            "daily": job({"view": "card_profile"}, chunk_rows=150, workers=2, schedule="0 3 * * *"),
            "broken": job({"path": "data/missing.parquet"}, schedule="0 3 * * *"),
            "fraud_daily": job({"view": "card_profile"}),  # the example's own, unscheduled
        }
    )
    clock = [at("2026-12-01T02:59:00")]
    sched = Scheduler(proj, clock=lambda: clock[0])
    try:
        assert await sched.tick() == []
        pids = []
        for day in ("01", "02", "03"):
            clock[0] = at(f"2026-12-{day}T03:00:00")
            assert sorted(await sched.tick()) == ["broken", "daily"]
            assert await sched.running["daily"].wait() == 0
            assert await sched.running["broken"].wait() == 1
            runner = sched.runners["daily"].proc
            assert runner is not None and runner.returncode is None
            pids.append(runner.pid)
            if day == "02":
                runner.kill()
                await runner.wait()
        assert pids[0] == pids[1] != pids[2]
        failed = sched.running["broken"]
        assert isinstance(failed, RunHandle) and "missing.parquet" in failed.answer["error"]
        done = [m for m in runs(proj, "daily") if m.status == "completed"]
        assert len(done) == 3 and all(m.total("scored") == 400 for m in done)
        log = proj.path(proj.batch_jobs["daily"].runs_dir) / "daily" / "scheduler.log"
        assert log.read_text().count('"status": "completed"') == 3
        runners = [r.proc for r in sched.runners.values()]
    finally:
        await sched.close()
    assert all(p is not None and p.returncode == 0 for p in runners)  # their input closed
