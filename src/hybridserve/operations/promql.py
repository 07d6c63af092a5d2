"""The PromQL of each route's SLIs, written once: the exported recording rules and alerts
(``export.py``) and ``slo report --prometheus`` (``slo.py``) both use these expressions.

Availability counts answers (``hybridserve_requests_total``): bad when a fallback gave it
(``source=~"fallback:.*"``) or nothing could (``status="unavailable"``). Latency counts
requests (``hybridserve_stage_seconds{stage="total"}``): good when within the target, read
from the histogram bucket whose bound is the largest one not above the target (a request in
it is surely within the target; set the target to a bucket bound for an exact count).
"""

from __future__ import annotations

from hybridserve.observability.metrics import LATENCY_BUCKETS

REQUESTS = "hybridserve_requests_total"
STAGE = "hybridserve_stage_seconds"
BURN_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
"""The windows recorded for every SLI (the burn-rate alerts' short and long windows)."""


def _q(route: str) -> str:
    return route.replace("\\", "\\\\").replace('"', '\\"')


def latency_bound(target: float) -> float:
    """The histogram bound latency SLIs count against for ``target`` seconds."""
    under = [b for b in LATENCY_BUCKETS if b <= target + 1e-12]
    return under[-1] if under else LATENCY_BUCKETS[0]


def _le(bound: float) -> str:
    return repr(float(bound))


def bad_and_total(route: str, sli: str, window: str, target: float = 0.0) -> tuple[str, str]:
    """(bad events, all events) of ``sli`` (``availability`` or ``latency``) over ``window``."""
    r = _q(route)
    if sli == "availability":
        bad = (
            f'(sum(increase({REQUESTS}{{route="{r}",source=~"fallback:.*"}}[{window}])) '
            f"or vector(0)) + "
            f'(sum(increase({REQUESTS}{{route="{r}",status="unavailable"}}[{window}])) '
            f"or vector(0))"
        )
        total = f'sum(increase({REQUESTS}{{route="{r}",status=~"ok|unavailable"}}[{window}]))'
        return bad, total
    total = f'sum(increase({STAGE}_count{{route="{r}",stage="total"}}[{window}]))'
    good = (
        f'sum(increase({STAGE}_bucket{{route="{r}",stage="total",'
        f'le="{_le(latency_bound(target))}"}}[{window}]))'
    )
    return f"({total} - {good})", total


def error_ratio(route: str, sli: str, window: str, target: float = 0.0) -> str:
    bad, total = bad_and_total(route, sli, window, target)
    return f"({bad}) / ({total})"


def recorded(window: str) -> str:
    """The name of the recording rule holding the error ratio over ``window``."""
    return f"hybridserve:slo_errors:ratio_rate{window}"
