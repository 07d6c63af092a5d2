"""Per-call latency of tree-model predictors by batch size: the library's own predict against
treelite's GTIL and a tl2cgen-compiled shared library (``runtimes/compiled.py`` serves the
last two; the numpy walker they replaced was measured by the commit that added this script).

Not a timed test: run it by hand (a few minutes)::

    .venv/bin/python bench/compilers.py                   # the fraud example's model
    .venv/bin/python bench/compilers.py --kind lightgbm   # or xgboost: same data, 100 trees

One OpenMP thread for every candidate (``threadpool_limits(1)``, ``nthread=1``), so the numbers
compare single-thread work; the candidates are alternated call by call in one loop so a busy
machine slows them alike. Each call is timed twice: the process's CPU time (what the call
costs, whoever else runs on the machine) and the wall clock (which on a shared machine also
counts the time the process waited for a core). Prints a Markdown table of median microseconds
per call, CPU / wall, and the largest absolute difference of each candidate's scores from the
library's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

Predict = Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]]
SIZES = (1, 8, 32, 64, 256, 1000)


def fit(kind: str) -> tuple[Any, np.ndarray[Any, Any]]:
    """The model (fitted as the fraud example fits it, or a 100-tree LightGBM / XGBoost
    classifier on the same cards) and held-out rows to score."""
    from hybridserve.examples.fraud.data import LABEL, feature_matrix, generate_cards
    from hybridserve.examples.fraud.train import fit_models

    table = generate_cards(20_000, seed=7)
    x = feature_matrix(table)
    rows = feature_matrix(generate_cards(4000, seed=11))
    if kind == "hgb":
        return fit_models(20_000, seed=7).fraud, rows
    y = table.column(LABEL).to_numpy().astype(np.int64)
    if kind == "lightgbm":
        import lightgbm

        model: Any = lightgbm.LGBMClassifier(
            n_estimators=100, num_leaves=15, verbose=-1, random_state=7, n_jobs=1
        )
    else:
        import xgboost

        model = xgboost.XGBClassifier(n_estimators=100, max_depth=4, random_state=7, n_jobs=1)
    return model.fit(x, y), rows


def candidates(model: Any, workdir: Path) -> dict[str, Predict]:
    """Every predictor that can run here, each returning the positive-class probability."""
    import tl2cgen
    import treelite

    out: dict[str, Predict] = {"library": lambda x: model.predict_proba(x)[:, 1]}
    if type(model).__module__.startswith("sklearn"):
        tl_model = treelite.sklearn.import_model(model)
    elif type(model).__module__.startswith("lightgbm"):
        tl_model = treelite.frontend.from_lightgbm(model.booster_)
    else:
        tl_model = treelite.frontend.from_xgboost(model.get_booster())
    out["treelite.gtil"] = lambda x: treelite.gtil.predict(tl_model, x, nthread=1).reshape(-1)
    lib = workdir / "model.so"
    start = time.perf_counter()
    tl2cgen.export_lib(tl_model, toolchain="gcc", libpath=str(lib), nthread=1)
    print(f"tl2cgen.export_lib: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    predictor = tl2cgen.Predictor(str(lib), nthread=1)
    out["tl2cgen .so"] = lambda x: predictor.predict(tl2cgen.DMatrix(x)).reshape(-1)
    return out


def measure(
    preds: dict[str, Predict], rows: np.ndarray[Any, Any], calls: int
) -> dict[int, dict[str, tuple[float, float]]]:
    """Median (CPU, wall) microseconds per call, per batch size and candidate (alternated call
    by call)."""
    result: dict[int, dict[str, tuple[float, float]]] = {}
    rng = np.random.default_rng(0)
    for n in SIZES:
        cpu: dict[str, list[float]] = {k: [] for k in preds}
        wall: dict[str, list[float]] = {k: [] for k in preds}
        reps = max(20, calls * 8 // (n + 7))
        for i in range(reps):
            start = int(rng.integers(0, len(rows) - n))
            batch = np.ascontiguousarray(rows[start : start + n])
            for name, fn in preds.items():
                c, w = time.process_time(), time.perf_counter()
                fn(batch)
                if i >= reps // 10:  # the first tenth warms up
                    cpu[name].append(time.process_time() - c)
                    wall[name].append(time.perf_counter() - w)
        result[n] = {
            k: (statistics.median(cpu[k]) * 1e6, statistics.median(wall[k]) * 1e6) for k in preds
        }
    return result


def main(argv: list[str] | None = None) -> None:
    """Fit, build every candidate, check its scores, time it, print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=["hgb", "lightgbm", "xgboost"], default="hgb")
    p.add_argument("--calls", type=int, default=2000, help="calls at batch size 1 (2000)")
    args = p.parse_args(argv)
    import tl2cgen  # noqa: F401 - loaded before the limit, so it limits their OpenMP too
    import treelite  # noqa: F401

    with threadpool_limits(limits=1), tempfile.TemporaryDirectory() as tmp:
        model, rows = fit(args.kind)
        preds = candidates(model, Path(tmp))
        expected = model.predict_proba(rows)[:, 1]
        diffs = {k: float(np.abs(fn(rows) - expected).max()) for k, fn in preds.items()}
        timing = measure(preds, rows, args.calls)
    names = list(preds)
    print("| rows | " + " | ".join(f"{k} µs (CPU / wall)" for k in names) + " |")
    print("|---:|" + "---:|" * len(names))
    for n, per in timing.items():
        cells = [f"{per[k][0]:,.0f} / {per[k][1]:,.0f}" for k in names]
        print(f"| {n} | " + " | ".join(cells) + " |")
    print("| max abs diff | " + " | ".join(f"{diffs[k]:.1e}" for k in names) + " |")


if __name__ == "__main__":
    main()
