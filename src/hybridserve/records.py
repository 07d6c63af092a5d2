"""The records every path shares: prediction records and feature reads.

A :class:`PredictionRecord` has one schema whether batch, streaming or an online request made
it, so the router can compare and serve any of them. Times are epoch seconds (floats) inside
the process and ISO-8601 strings only at the edges.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

Source = Literal["batch", "stream", "online"]
FeatureStatus = Literal["present", "stale", "missing"]


_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A request id unique across processes and restarts (random per process, then a
    counter): as unique as a uuid4 for this purpose, at a fraction of the cost."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"


def now() -> float:
    """The current time as epoch seconds (one clock for the whole package)."""
    return time.time()


_iso_second: tuple[int, str] = (0, "1970-01-01T00:00:00")  # a whole second and its text


def to_iso(ts: float | None) -> str | None:
    """Epoch seconds as RFC 3339 UTC text (``2026-11-23T10:00:00.123456Z``).

    Answers carry one or two of these each; the date-time part of the last second seen is
    kept, so most calls only format the microseconds.
    """
    if ts is None:
        return None
    second = math.floor(ts)
    micros = round((ts - second) * 1_000_000)
    if micros >= 1_000_000:
        second, micros = second + 1, 0
    global _iso_second
    cached, text = _iso_second  # one tuple, swapped whole: safe across threads
    if cached != second:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _iso_second = (second, text)
    return f"{text}.{micros:06d}Z" if micros else f"{text}Z"


# The times ``to_iso`` renders (a year between 1 and 9999), with a day of margin.
_FIRST_TIME = datetime(1, 1, 2, tzinfo=UTC).timestamp()
_LAST_TIME = datetime(9999, 12, 30, tzinfo=UTC).timestamp()


def check_time(name: str, ts: float) -> None:
    """:class:`ValueError` unless ``ts`` is a finite time that :func:`to_iso` can render."""
    if not (isinstance(ts, int | float) and math.isfinite(ts) and _FIRST_TIME <= ts <= _LAST_TIME):
        raise ValueError(f"{name} {ts!r} is not a time between the years 1 and 9999")


@dataclass(slots=True)
class PredictionRecord:
    """One prediction for one entity of one route, from any path."""

    entity: str
    route: str
    score: float
    model: str
    model_version: int
    source: Source
    as_of: float
    """Event or snapshot time of the features the score was computed from."""
    computed_at: float
    label: Any = None
    probabilities: dict[str, float] | None = None
    run_id: str | None = None
    event_id: str | None = None
    request_id: str | None = None
    feature_fingerprint: str = ""

    def age(self, at: float | None = None) -> float:
        """Seconds between ``as_of`` and ``at`` (default now); never negative."""
        return max(0.0, (now() if at is None else at) - self.as_of)

    def to_bytes(self) -> bytes:
        return orjson.dumps(self, option=orjson.OPT_SERIALIZE_NUMPY)

    @classmethod
    def from_bytes(cls, data: bytes) -> PredictionRecord:
        """The record in ``data``; :class:`ValueError` or :class:`TypeError` for one that is
        not a record, or whose times cannot be rendered (so no reader fails on it later)."""
        return cls(**orjson.loads(data)).checked()

    def checked(self) -> PredictionRecord:
        """This record, or :class:`ValueError` when its times cannot be rendered (a record
        read back from a store is checked here, so no reader fails on it later)."""
        check_time("as_of", self.as_of)
        check_time("computed_at", self.computed_at)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class FeatureValue:
    """One feature of one entity as read from the online store."""

    value: Any
    status: FeatureStatus
    age: float | None = None
    """Seconds since the feature's event time; ``None`` when missing."""


@dataclass(slots=True)
class FeatureRow:
    """All requested features of one entity, with the oldest event time among them."""

    entity: str
    values: dict[str, FeatureValue] = field(default_factory=dict)
    as_of: float | None = None
    """The oldest event time among the present features: a score made from this row is as
    fresh as its stalest input."""

    def plain(self) -> dict[str, Any]:
        """Feature name -> value (``None`` for missing or stale features)."""
        return {
            name: (fv.value if fv.status == "present" else None) for name, fv in self.values.items()
        }
