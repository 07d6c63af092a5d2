"""The scheduler starts due jobs, one run per job at a time, on a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

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
