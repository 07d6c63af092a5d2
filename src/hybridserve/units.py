"""Durations (``30s``, ``1h``, ``7d``, ``250ms``) and sizes (``1MiB``, ``512kb``).

They are parsed here and nowhere else."""

from __future__ import annotations

import math
import re

_WS = "[ \\t\\n\\r\\f\\v]*"
DURATION_PATTERN = rf"^{_WS}([0-9]+(?:\.[0-9]+)?){_WS}(ms|s|m|h|d|w)?{_WS}$"
"""A duration string; ASCII classes only, so Python and JSON Schema (the API document) agree."""
_DURATION = re.compile(DURATION_PATTERN)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``value``: a number, or a string like ``'250ms'``, ``'1h'``, ``'7d'``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '1h', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"expected a non-negative duration, got {value!r}")
        try:
            return float(value)
        except OverflowError:  # past float's range, as a 400-digit string reads too
            return math.inf
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a duration like '1h', got {value!r}")
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS[unit or "s"]


def parse_size(value: str | int) -> int:
    """Bytes in ``value``: an integer, or a string like ``'1MiB'``, ``'512kb'``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like '1MiB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a non-negative size, got {value!r}")
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a size like '1MiB', got {value!r}")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[(unit or "b").lower()])


def format_duration(seconds: float) -> str:
    """A short human form: ``0.25`` -> ``'250ms'``, ``3600`` -> ``'1h'``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f}".rstrip("0").rstrip(".") + unit
    return f"{seconds:.1f}".rstrip("0").rstrip(".") + "s"
