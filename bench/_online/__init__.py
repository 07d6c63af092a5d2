"""Helpers for ``bench/online.py``: the bench project, the servers, the load generator, the report.

Modules here run in two interpreters: ``floor_app``, ``naive_app`` and ``model_timing`` in the
package's ``.venv``; ``mosec_app`` in its own ``bench/.venv-mosec``. Only the standard library,
numpy, joblib and scikit-learn are imported by the server-side modules.
"""
