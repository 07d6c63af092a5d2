"""Schemathesis hooks for ``test_openapi_fuzz`` (loaded through ``SCHEMATHESIS_HOOKS``).

An event's time may be at most ``max_future`` ahead of the server's clock when the request
arrives. JSON Schema cannot say "now": the document states the bound as of when it was
built (a ``maximum``), and an ISO time cannot carry a bound at all. So the fuzzer sends no
event whose time is past the document's bound, in either direction of the check: below it
the server must accept, and every other rule of the event is still tried both ways.
"""

from __future__ import annotations

from typing import Any

import schemathesis

from hybridserve.streaming.events import parse_timestamp


def _bounds(context: Any) -> dict[str, float]:
    """Field -> latest time allowed, for the event fields whose schema states one."""
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
                    out[name] = float(inner["maximum"])
    return out


def _past_bound(event: Any, bounds: dict[str, float]) -> bool:
    if not isinstance(event, dict):
        return False
    for name, latest in bounds.items():
        try:
            if parse_timestamp(event.get(name)) > latest:
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
