"""Where model calls run is decided once per model, from a robust figure, and logged."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from threadpoolctl import threadpool_limits

from hybridserve.config import Project

MakeProject = Callable[..., Project]
Serve = Callable[[Project], Any]


async def test_auto_mode_decides_on_the_median_of_several_timings_and_logs_them(
    make_project: MakeProject, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hybridserve.models")
    app, _ = await serve(make_project({"server": {"model_execution": "auto"}}))
    lines = [r.getMessage() for r in caplog.records if "a batch of 64 takes" in r.getMessage()]
    assert lines and all("median of 11" in line for line in lines), lines
    # The example's tree ensemble takes a few ms a batch: far under the 10 ms threshold.
    assert all(line.endswith("model calls run inline") for line in lines), lines
    assert app.state.models.get("fraud").batcher.inline


def test_one_slow_timing_does_not_change_the_choice(make_project: MakeProject) -> None:
    from hybridserve.observability.metrics import Metrics
    from hybridserve.routing.models import ModelManager
    from hybridserve.scoring import Scorer
    from hybridserve.services import Services

    project = make_project()
    services = Services.open(project)
    manager = ModelManager(services, Metrics(), execution="auto", inline_below=0.010)
    scorer = Scorer(project, "fraud", services.registry.load("fraud@production"))
    calls = iter(range(100))
    real = scorer.runtime.predict

    def jittery(matrix: Any, **kw: Any) -> Any:
        # Every third call is caught by a stall: a single timing (or the best of three,
        # depending on which calls were timed) would vary from start to start.
        if next(calls) % 3 == 0:
            time.sleep(0.05)
        return real(matrix, **kw)

    scorer.runtime.predict = jittery  # type: ignore[method-assign]
    with threadpool_limits(1):  # as the server runs model calls (server.model_threads)
        assert manager._inline("fraud/1", scorer) is True
