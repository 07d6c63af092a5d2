"""Where model calls run is decided once per model, from a robust figure (the fastest of 11
timed batches: load only ever adds to a call), and logged."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import pytest

from hybridserve.config import Project

MakeProject = Callable[..., Project]
Serve = Callable[[Project], Any]


async def test_auto_mode_logs_the_timings_it_decided_on(
    make_project: MakeProject, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hybridserve.models")
    app, _ = await serve(make_project({"server": {"model_execution": "auto"}}))
    lines = [r.getMessage() for r in caplog.records if "a batch of 64 takes" in r.getMessage()]
    # fraud, the fallback model fraud_rules (one batcher for both routes), fraud_windows
    assert len(lines) == 3, lines
    for line in lines:
        m = re.search(
            r"takes ([\d.]+) ms \(fastest of 11; median ([\d.]+), slowest ([\d.]+) ms\), "
            r"(under|not under) 10.0 ms: model calls run (inline|in a thread)$",
            line,
        )
        assert m, line
        fastest, median, slowest = (float(m.group(i)) for i in (1, 2, 3))
        assert fastest <= median <= slowest
        assert (m.group(4) == "under") == (m.group(5) == "inline") == (fastest < 10.0)
    fraud = app.state.models.get("fraud")
    assert fraud is not None
    assert fraud.batcher.inline == any(
        line.startswith("fraud/1") and line.endswith("inline") for line in lines
    )


class StallingModel:
    """A model whose every third call is caught in a 50 ms stall, on a fake clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls = 0

    def clock(self) -> float:
        return self.now

    def predict(self, matrix: Any, **kw: Any) -> None:
        self.calls += 1
        self.now += 0.050 if self.calls % 3 == 0 else 0.001


@pytest.mark.parametrize("inline_below", [0.002, 0.010])
def test_stalled_timings_do_not_change_the_choice(
    make_project: MakeProject, inline_below: float
) -> None:
    from hybridserve.observability.metrics import Metrics
    from hybridserve.routing.models import ModelManager
    from hybridserve.scoring import Scorer
    from hybridserve.services import Services

    project = make_project()
    services = Services.open(project)
    manager = ModelManager(services, Metrics(), execution="auto", inline_below=inline_below)
    scorer = Scorer(project, "fraud", services.registry.load("fraud@production"))
    model = StallingModel()
    scorer.runtime.predict = model.predict  # type: ignore[method-assign]
    # A third of the timed calls took 50 times longer; the model's own cost is still 1 ms.
    assert manager._inline("fraud/1", scorer, clock=model.clock) is True
    assert model.calls == 13  # two to warm up, eleven timed
