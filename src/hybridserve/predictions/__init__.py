"""Prediction records, the store they live in, and the server's L1 cache."""

from __future__ import annotations

from hybridserve.predictions.store import PredictionStore, RunPointer, prediction_key, run_name

__all__ = ["PredictionStore", "RunPointer", "prediction_key", "run_name"]
