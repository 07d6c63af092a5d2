"""The model-thread limit holds for libraries loaded after it was set."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def test_the_limit_reaches_openmp_and_blas_loaded_after_it() -> None:
    # A fresh process: here scikit-learn (and with it libgomp) is not imported yet when the
    # limit is set, as in `stream run` and `serve`, which load their models after start-up.
    code = textwrap.dedent(
        """
        import json, sys
        from hybridserve.runtimes.threads import limit_threads
        assert "sklearn" not in sys.modules
        limit_threads(1)
        import numpy as np
        from sklearn.ensemble import HistGradientBoostingClassifier
        from threadpoolctl import threadpool_info
        x = np.random.default_rng(0).normal(size=(200, 3))
        HistGradientBoostingClassifier(max_iter=3).fit(x, x[:, 0] > 0).predict_proba(x)
        print(json.dumps([[p["user_api"], p["num_threads"]] for p in threadpool_info()]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    pools = json.loads(out.stdout.strip().splitlines()[-1])
    assert any(api == "openmp" for api, _ in pools), pools
    assert all(n == 1 for _, n in pools), pools
