"""Time the model's own in-process ``predict_proba`` on one row (no HTTP, no JSON).

Usage: ``python -m model_timing MODEL.joblib ROWS.npy [CALLS]``; prints one JSON object with
the median and p99 milliseconds per call over ``CALLS`` calls (default 2000), each on a
different row, after 200 warm-up calls. Run it pinned to the servers' core.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import joblib
import numpy as np


def main(argv: list[str]) -> None:
    """Load the model and the rows, time single-row calls, print the result as JSON."""
    model = joblib.load(argv[0])
    rows = np.load(argv[1])
    calls = int(argv[2]) if len(argv) > 2 else 2000
    singles = [rows[i % len(rows)][None, :] for i in range(calls)]
    for row in singles[:200]:
        model.predict_proba(row)
    times = []
    for row in singles:
        start = time.perf_counter()
        model.predict_proba(row)
        times.append(time.perf_counter() - start)
    times.sort()
    print(
        json.dumps(
            {
                "calls": calls,
                "median_ms": statistics.median(times) * 1e3,
                "p99_ms": times[int(0.99 * (len(times) - 1))] * 1e3,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
