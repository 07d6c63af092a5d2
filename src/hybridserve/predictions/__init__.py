"""Prediction records and the store they live in."""

from __future__ import annotations

from hybridserve.predictions.store import PredictionStore, prediction_key

__all__ = ["PredictionStore", "prediction_key"]
