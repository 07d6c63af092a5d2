"""hybridserve: batch, online and streaming predictions on one registry, one feature store
and one prediction record."""

from __future__ import annotations

__version__ = "0.1.0"
