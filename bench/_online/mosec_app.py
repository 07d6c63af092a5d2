"""Server (c), mosec: one worker with dynamic batching (up to 64 requests, 2 ms wait).

Runs in its own virtualenv (``bench/.venv-mosec``). Each request carries the same JSON body as
(b) and (e); the worker stacks the batch's rows into one matrix and calls ``predict_proba`` once.
Environment: ``BENCH_MODEL`` (joblib file, the same fitted estimator as (b)), ``BENCH_FEATURES``
(comma-separated feature names, in column order). Start with
``python mosec_app.py --address 127.0.0.1 --port PORT``; it serves ``POST /inference``.
"""

from __future__ import annotations

import os
from typing import Any

from mosec import Server, Worker

MAX_BATCH_SIZE = 64
MAX_WAIT_MS = 2


class Inference(Worker):
    """Score a dynamic batch of requests in one model call."""

    def __init__(self) -> None:
        super().__init__()
        import joblib
        import numpy as np

        self.np = np
        self.model = joblib.load(os.environ["BENCH_MODEL"])
        self.features = os.environ["BENCH_FEATURES"].split(",")

    def forward(self, data: list[Any]) -> list[dict[str, Any]]:
        """``data`` is the list of decoded JSON bodies of one batch."""
        entities = [body["entities"][0] for body in data]
        names = self.features
        matrix = self.np.array(
            [[float(e["features"][n]) for n in names] for e in entities], dtype=self.np.float64
        )
        scores = self.model.predict_proba(matrix)[:, 1].tolist()
        return [
            {"entity": e["key"], "score": s, "label": int(s >= 0.5)}
            for e, s in zip(entities, scores, strict=True)
        ]


if __name__ == "__main__":
    server = Server()
    server.append_worker(Inference, num=1, max_batch_size=MAX_BATCH_SIZE, max_wait_time=MAX_WAIT_MS)
    server.run()
