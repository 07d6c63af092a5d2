"""What a runtime adds over the library's own predict: the sklearn runtime vs predict_proba.

Moved out of the unit suite (a timing assertion there failed on a busy machine). Prints the
per-call overhead for a 32-row batch of a logistic regression, best of five repeats.

    python bench/runtime_overhead.py
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "runtimes"))

import toy_models as tm

from hybridserve.runtimes.base import Signature
from hybridserve.runtimes.sklearn import SklearnRuntime


def main() -> int:
    model = tm.train("logreg")
    x, _, _ = tm.dataset(n=32, seed=9)
    sig = Signature.from_list(tm.FEATURES)
    rt = SklearnRuntime(model, name="m", version=1, signature=sig, task="classification")
    n = 200
    direct = min(timeit.repeat(lambda: model.predict_proba(x), number=n, repeat=5)) / n
    wrapped = min(timeit.repeat(lambda: rt.predict(x), number=n, repeat=5)) / n
    print(f"predict_proba {direct * 1e6:.1f} us, runtime {wrapped * 1e6:.1f} us per call")
    print(f"overhead {(wrapped - direct) * 1e6:.1f} us (target under 30 us)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
