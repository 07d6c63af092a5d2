"""Cost and mode advice: batch-only, online-only or hybrid, from measured costs.

:func:`advise` is the arithmetic, a pure function of :class:`Inputs` (``hybridserve advise``
gathers them from run manifests, the server's counters and a timed sample, see
``cli/advise.py``). For each mode it gives the core-seconds per day, the cost per day and per
1,000 predictions at the project's price per core-hour, and the staleness an answer can have:

- **batch-only**: every entity is scored by a batch run and every request reads a stored
  answer. A run takes ``entities / batch_rows_per_s``; an answer is at most one run interval
  plus one run old. To meet the freshness bound the runs repeat every
  ``min(scheduled interval, bound - run time)`` (impossible when one run takes longer than the
  bound).
- **online-only**: every request is computed now; answers are as fresh as the features.
- **hybrid**: batch runs score the active entities only, on the interval that meets the bound
  for them; requests for those are stored hits (``hit_rate``), the rest are computed now.

The choice is the cheapest mode that meets the bound (on a tie, the one with fresher answers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

DAY = 86400.0
Mode = Literal["batch-only", "online-only", "hybrid"]


@dataclass(slots=True, frozen=True)
class Inputs:
    requests_per_s: float
    """Predictions asked for per second."""
    entities: int
    """Entities a batch run scores (all of them)."""
    active_entities: int
    """Entities the hybrid mode precomputes."""
    hit_rate: float
    """Share of requests the hybrid mode answers from its stored (active) entities."""
    batch_core_s_per_row: float
    batch_rows_per_s: float
    batch_interval_s: float
    """How often the batch job is scheduled (its cron), the longest interval considered."""
    online_core_s_per_answer: float
    """Cost of computing one answer now (features read plus model call)."""
    lookup_core_s_per_answer: float
    """Cost of serving one stored answer."""
    freshness_s: float
    """The route's bound on a stored answer's age."""
    core_hour: float
    currency: str = "USD"


@dataclass(slots=True, frozen=True)
class ModeCost:
    mode: Mode
    core_s_per_day: float
    cost_per_day: float
    cost_per_1k: float
    staleness_s: float
    """The oldest an answer can be (0: computed at request time)."""
    interval_s: float | None
    """How often batch runs repeat in this mode (``None``: no batch runs)."""
    meets_freshness: bool
    note: str


@dataclass(slots=True, frozen=True)
class Advice:
    inputs: Inputs
    modes: list[ModeCost]
    choice: Mode | None
    """The cheapest mode that meets the bound (``None``: none does)."""
    why: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _batch_schedule(rows: int, inp: Inputs) -> tuple[float, float, bool]:
    """Interval, staleness and whether the bound is met for runs scoring ``rows`` rows."""
    run_s = rows / inp.batch_rows_per_s if rows else 0.0
    room = inp.freshness_s - run_s
    if room <= 0:  # one run alone takes longer than the bound
        return inp.batch_interval_s, inp.batch_interval_s + run_s, False
    interval = min(inp.batch_interval_s, room)
    return interval, interval + run_s, True


def _cost(mode: Mode, core_s: float, inp: Inputs, staleness: float, interval: float | None,
          meets: bool, note: str) -> ModeCost:  # fmt: skip
    per_day = core_s / 3600.0 * inp.core_hour
    answers_per_day = inp.requests_per_s * DAY
    per_1k = per_day / answers_per_day * 1000.0 if answers_per_day else 0.0
    return ModeCost(mode, core_s, per_day, per_1k, staleness, interval, meets, note)


def advise(inp: Inputs) -> Advice:
    """The three modes' costs and staleness, and the cheapest that meets the bound."""
    asked = inp.requests_per_s * DAY
    b_interval, b_stale, b_meets = _batch_schedule(inp.entities, inp)
    batch_core = inp.entities * inp.batch_core_s_per_row * DAY / b_interval
    batch = _cost(
        "batch-only",
        batch_core + asked * inp.lookup_core_s_per_answer,
        inp,
        b_stale,
        b_interval,
        b_meets,
        f"{DAY / b_interval:.3g} runs/day of {inp.entities} entities",
    )
    online = _cost(
        "online-only",
        asked * inp.online_core_s_per_answer,
        inp,
        0.0,
        None,
        True,
        f"{asked:.0f} answers/day computed now",
    )
    h_interval, h_stale, h_meets = _batch_schedule(inp.active_entities, inp)
    hybrid_core = (
        inp.active_entities * inp.batch_core_s_per_row * DAY / h_interval
        + asked * inp.hit_rate * inp.lookup_core_s_per_answer
        + asked * (1 - inp.hit_rate) * inp.online_core_s_per_answer
    )
    hybrid = _cost(
        "hybrid",
        hybrid_core,
        inp,
        h_stale,
        h_interval,
        h_meets,
        f"{DAY / h_interval:.3g} runs/day of {inp.active_entities} active entities; "
        f"{inp.hit_rate:.0%} stored hits, the rest computed now",
    )
    modes = [batch, online, hybrid]
    ok = [m for m in modes if m.meets_freshness]
    if not ok:
        return Advice(inp, modes, None, "no mode meets the freshness bound")
    best = min(ok, key=lambda m: (round(m.cost_per_day, 9), m.staleness_s))
    others = ", ".join(
        f"{m.mode} {m.cost_per_day:.4g}" + ("" if m.meets_freshness else " (too stale)")
        for m in modes
        if m is not best
    )
    why = (
        f"{best.mode} meets the {inp.freshness_s:g}s freshness bound at the lowest cost: "
        f"{best.cost_per_day:.4g} {inp.currency}/day (vs {others})"
    )
    return Advice(inp, modes, best.mode, why)
