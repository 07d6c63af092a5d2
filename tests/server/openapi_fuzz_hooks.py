"""Schemathesis hooks for ``test_openapi_fuzz`` (loaded through ``SCHEMATHESIS_HOOKS``).

An event's time must lie within ``max_past`` before and ``max_future`` after the server's
clock when the request arrives. JSON Schema cannot say "now": the document states the bounds
as of when it was built (``minimum``, ``maximum``), and an ISO time cannot carry them at all.
So the fuzzer sends no event whose time is outside them (or within SLACK of the lower one,
which the clock passes during a run), in either direction of the check: inside, the server
must accept, and every other rule of the event is still tried both ways.
"""

from __future__ import annotations

from typing import Any

import schemathesis

from hybridserve.streaming.events import parse_timestamp

SLACK = 600.0
"""Seconds kept clear of the lower bound, which the clock moves past during a run."""


def _bounds(context: Any) -> dict[str, tuple[float, float]]:
    """Field -> (earliest, latest) time allowed, for the event fields whose schema states them."""
    operation = context.operation
    if operation is None or not operation.path.startswith("/v1/events/"):
        return {}
    stream = operation.path.rsplit("/", 1)[-1]
    event = operation.schema.raw_schema["components"]["schemas"][f"Event.{stream}"]
    out = {}
    for name, prop in event["properties"].items():
        for option in [prop, *prop.get("anyOf", [])]:
            for inner in [option, *option.get("anyOf", [])]:
                if "maximum" in inner:
                    out[name] = (float(inner["minimum"]) + SLACK, float(inner["maximum"]))
    return out


def _past_bound(event: Any, bounds: dict[str, tuple[float, float]]) -> bool:
    if not isinstance(event, dict):
        return False
    for name, (earliest, latest) in bounds.items():
        try:
            if not earliest <= parse_timestamp(event.get(name)) <= latest:
                return True
        except (ValueError, TypeError, OverflowError):
            continue
    return False


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    bounds = _bounds(context)
    if not bounds:
        return True
    body = case.body
    events = body if isinstance(body, list) else [body]
    return not any(_past_bound(e, bounds) for e in events)
