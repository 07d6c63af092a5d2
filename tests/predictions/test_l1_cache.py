"""The L1 cache: bounded, never holding a record past ``as_of + ttl``, newest record wins."""

from __future__ import annotations

from hybridserve.predictions.cache import L1Cache
from hybridserve.records import PredictionRecord

T = 1_000_000.0


def rec(entity: str, as_of: float, score: float = 0.5, route: str = "r") -> PredictionRecord:
    return PredictionRecord(entity, route, score, "m", 1, "online", as_of, as_of)


def test_entry_lives_until_as_of_plus_ttl() -> None:
    cache = L1Cache()
    cache.put(rec("a", T - 50), ttl=60, at=T)
    assert cache.get("r", "a", T + 9.9) is not None
    assert cache.get("r", "a", T + 10) is None  # as_of + ttl reached: gone
    assert len(cache) == 0
    cache.put(rec("b", T - 61), ttl=60, at=T)  # already too old: not stored
    assert cache.get("r", "b", T) is None and len(cache) == 0


def test_an_older_record_never_replaces_a_newer_one() -> None:
    cache = L1Cache()
    cache.put(rec("a", T - 10, score=0.9), ttl=60, at=T)
    cache.put(rec("a", T - 20, score=0.1), ttl=60, at=T)
    got = cache.get("r", "a", T)
    assert got is not None and got.score == 0.9
    cache.put(rec("a", T - 5, score=0.3), ttl=60, at=T)
    got = cache.get("r", "a", T)
    assert got is not None and got.score == 0.3


def test_bounded_first_in_first_out() -> None:
    cache = L1Cache(max_entries=3)
    for i, entity in enumerate("abcd"):
        cache.put(rec(entity, T + i), ttl=60, at=T)
    assert len(cache) == 3
    assert cache.get("r", "a", T) is None
    assert all(cache.get("r", e, T) is not None for e in "bcd")
    cache.put(rec("b", T + 9), ttl=60, at=T)  # an update takes no new room
    assert len(cache) == 3 and cache.get("r", "c", T) is not None


def test_routes_are_separate_and_invalidate_by_route() -> None:
    cache = L1Cache()
    cache.put(rec("a", T, route="x"), ttl=60, at=T)
    cache.put(rec("a", T, route="y", score=0.7), ttl=60, at=T)
    y = cache.get("y", "a", T)
    assert y is not None and y.score == 0.7
    cache.invalidate("x")
    assert cache.get("x", "a", T) is None and cache.get("y", "a", T) is not None
    cache.invalidate()
    assert len(cache) == 0


def test_size_zero_disables_the_cache() -> None:
    cache = L1Cache(max_entries=0)
    cache.put(rec("a", T), ttl=60, at=T)
    assert cache.get("r", "a", T) is None and len(cache) == 0
