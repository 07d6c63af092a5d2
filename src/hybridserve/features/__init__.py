"""The feature store: feature views, their offline sources and the online store."""

from __future__ import annotations

from hybridserve.features.online import OnlineFeatureStore, feature_key, merge_request_features

__all__ = ["OnlineFeatureStore", "feature_key", "merge_request_features"]
