"""The answer tally: slots, the health window, publication and the CPU share."""

from __future__ import annotations

from hybridserve.observability.tally import Slot, Tally


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_record_counts_answers_requests_latency_and_slow_ones() -> None:
    clock = Clock(3600.0 * 10)
    tally = Tally({"r": 0.05}, window=10, clock=clock, cpu=lambda: 0.0)
    tally.record("r", 0.004, {"cache": 3}, 0, 0)
    tally.record("r", 0.2, {"fallback:default": 1}, 1, 1)
    slot = tally.recent("r")
    assert (slot.answers, slot.good, slot.degraded, slot.unavailable) == (5, 3, 1, 1)
    assert (slot.requests, slot.slow) == (2, 1)
    assert slot.p99() == (0.1, 0.25)
    minute = tally.minutes[("r", 600)]
    assert minute.sources == {"cache": [3, 0.0], "fallback:default": [1, 0.0], "none": [1, 0.0]}
    clock.t += 11  # past the health window
    assert tally.recent("r").answers == 0


def test_minute_documents_are_taken_once_and_restored_on_failure() -> None:
    clock = Clock(3600.0 * 10 + 30)
    tally = Tally({"r": 1.0}, clock=clock, cpu=lambda: 0.0)
    tally.record("r", 0.01, {"online": 1}, 0, 0)
    docs = tally.take_dirty()
    assert list(docs) == [("r", 10)]
    assert docs[("r", 10)]["600"]["answers"] == 1
    assert tally.take_dirty() == {}
    tally.restore("r", 10, docs[("r", 10)])
    assert tally.take_dirty() == docs
    clock.t += 3600  # the next hour: the past hour's minutes are dropped once published
    tally.record("r", 0.01, {"online": 1}, 0, 0)
    assert list(tally.take_dirty()) == [("r", 11)]
    assert all(minute // 60 == 11 for _, minute in tally.minutes)


def test_cpu_is_shared_by_time_in_the_server() -> None:
    cpu = Clock(0.0)
    tally = Tally({}, clock=Clock(600.0), cpu=cpu)
    tally.record("r", 0.003, {"cache": 1}, 0, 0)
    tally.record("r", 0.009, {"online": 1}, 0, 0)
    cpu.t = 1.2
    assert tally.charge() == 1.2
    sources = tally.minutes[("r", 10)].sources
    assert sources["cache"][1] == 0.3
    assert abs(sources["online"][1] - 0.9) < 1e-12


def test_slots_round_trip_and_add() -> None:
    a = Slot(answers=2, good=1, degraded=1, requests=1, sources={"online": [2, 0.5]})
    b = Slot.from_json(a.to_json())
    b.add(a)
    assert (b.answers, b.good, b.sources) == (4, 2, {"online": [4.0, 1.0]})


def test_requests_alike_are_counted_together_and_read_as_if_counted_one_by_one() -> None:
    clock, cpu = Clock(3600.0 * 10), Clock(0.0)
    tally = Tally({"r": 0.05}, window=10, clock=clock, cpu=cpu)
    for i in range(1000):
        tally.record("r", 0.001 * (1 + i % 2), {"cache": 1}, 0, 0)
    tally.record("r", 0.3, {"online": 1}, 0, 1)
    clock.t += 1
    tally.record("r", 0.001, {"cache": 2}, 1, 0)
    assert len(tally._pending) == 4  # held as kinds of request, not one by one
    slot = tally.recent("r")
    assert (slot.answers, slot.good, slot.degraded, slot.unavailable) == (1004, 1002, 1, 1)
    assert (slot.requests, slot.slow) == (1002, 1)
    assert slot.latency[1] == 501 and slot.latency[2] == 500 and sum(slot.latency) == 1002
    cpu.t = 2.0
    assert tally.charge() == 2.0
    minute = tally.minutes[("r", 600)]
    total_seconds = 500 * 0.001 + 500 * 0.002 + 0.3 + 0.001
    assert minute.sources["cache"][0] == 1002
    assert abs(minute.sources["cache"][1] - 2.0 * (1.5 + 0.001) / total_seconds) < 1e-9
    assert abs(minute.sources["none"][1] - 2.0 * 0.15 / total_seconds) < 1e-9


def test_many_kinds_of_request_are_added_to_the_slots_without_a_reader() -> None:
    clock = Clock(3600.0 * 10)
    tally = Tally({"r": 1.0}, window=100_000, clock=clock, cpu=lambda: 0.0)
    for _ in range(5000):
        clock.t += 1
        tally.record("r", 0.01, {"online": 1}, 0, 0)
        assert len(tally._pending) < 1000
    assert tally.recent("r").requests == 5000
