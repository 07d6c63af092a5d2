"""``python faulty_consumer.py ARGS``: ``hybridserve ARGS`` with a fault injected, for tests
that signal a real consumer process while it is in a given state.

``HS_TEST_FAULT`` picks the fault: ``slow`` (every model call sleeps a minute, in its
thread), ``fail`` (every micro-batch raises after reading), or nothing. ``HS_TEST_MARKS``
names a file that gets one line per step: ``score`` when a model call starts, ``fail`` when a
batch raised, ``done`` when one was committed, so the test knows where the process is.
"""

from __future__ import annotations

import os
import time
from typing import Any

from hybridserve.cli import main
from hybridserve.scoring import Scorer
from hybridserve.streaming.pipeline import BatchProcessor

FAULT = os.environ.get("HS_TEST_FAULT", "")
MARKS = os.environ["HS_TEST_MARKS"]


def mark(step: str) -> None:
    with open(MARKS, "a") as f:
        f.write(step + "\n")


real_score, real_finish = Scorer.score_rows, BatchProcessor.finish


def score_rows(self: Scorer, *args: Any, **kwargs: Any) -> Any:
    mark("score")
    if FAULT == "slow":
        time.sleep(60.0)
    return real_score(self, *args, **kwargs)


async def finish(self: BatchProcessor, prepared: Any) -> Any:
    try:
        if FAULT == "fail":
            raise RuntimeError("injected batch failure")
        result = await real_finish(self, prepared)
    except Exception:
        mark("fail")
        raise
    mark("done")
    return result


Scorer.score_rows = score_rows  # type: ignore[method-assign]
BatchProcessor.finish = finish  # type: ignore[method-assign]
main()
