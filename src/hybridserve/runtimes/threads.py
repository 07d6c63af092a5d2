"""How many threads one model call may use: the OpenMP and BLAS pools of the process.

A process that serves or consumes runs many small model calls beside its event loop (and, on
a small host, beside Redis). OpenMP workers spin for a while after each parallel region, on
cores the loop needs, so these processes use one thread per call by default
(``server.model_threads``, ``stream run --model-threads``).

:func:`limit_threads` must hold for libraries not loaded yet: a model's library (and with it
libgomp or OpenBLAS) is usually imported by the model's first load, after start-up has set
the limit. threadpoolctl changes only the pools loaded when it is called, so the limit is
also put in the environment variables those libraries read when they load.
"""

from __future__ import annotations

import os

_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_threads(n: int) -> None:
    """At most ``n`` threads per model call, for this process and the processes it starts,
    in the libraries loaded already and in those loaded later."""
    from threadpoolctl import threadpool_limits

    for name in _ENV:
        os.environ[name] = str(n)
    threadpool_limits(limits=n)
