"""A batch decoded by columns gives what decoding its entries one at a time gives."""

from __future__ import annotations

import time
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridserve.config import load_project
from hybridserve.examples.fraud import PROJECT_FILE
from hybridserve.streaming.events import RawEntry, decode, decode_batch

CFG = (
    load_project(PROJECT_FILE, env=False)
    .streams["transactions"]
    .model_copy(update={"max_field_size": 40, "max_event_size": 400})
)
AT = time.time()

anything = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=50)
)
times = (
    st.floats(AT + 301, AT + 3600)  # beyond max_future
    | st.floats(AT - 30 * 86400, AT - 9 * 86400)  # beyond max_past
    | st.integers(int(AT) - 86400, int(AT) + 600)
    | st.text(max_size=30)
    | st.sampled_from(["2026-01-01T00:00:00Z", "nan", ""])
)


@st.composite
def payloads(draw: Any) -> bytes | dict[str, str]:
    def field(valid: Any, other: Any = anything) -> Any:
        """Mostly a valid value, so that most events are valid and some are not."""
        return draw(valid if draw(st.integers(0, 5)) else other)

    obj: dict[str, Any] = {
        "event_id": field(st.text(min_size=1, max_size=12), st.integers(0, 99) | anything),
        "card_id": field(st.sampled_from(["card_1", "card_2"]), st.just("") | anything),
        "event_time": field(st.floats(AT - 3600, AT + 200), times | st.none()),
        "amount": field(st.floats(0, 1e4) | st.integers(0, 10**6)),
        "merchant_id": field(st.text(max_size=10), st.text(max_size=60)),
        "merchant_category": field(st.sampled_from(["grocery", "travel"])),
        "is_foreign": field(st.booleans()),
    }
    for name in draw(st.sets(st.sampled_from(sorted(obj)), max_size=2)):
        del obj[name]
    shape = draw(st.sampled_from(["json", "json", "json", "text", "broken", "list"]))
    if shape == "text":
        return {k: str(v) for k, v in obj.items()}
    if shape == "list":
        return orjson.dumps([obj])
    raw = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS) if shape == "json" else b"{bad"
    return raw


@settings(max_examples=300, deadline=None)
@given(st.lists(payloads(), max_size=12))
def test_decode_batch_equals_decoding_one_at_a_time(batch: list[bytes | dict[str, str]]) -> None:
    entries = [RawEntry(f"{i}-0", p) for i, p in enumerate(batch)]
    assert decode_batch(CFG, entries, AT) == [decode(CFG, e, AT) for e in entries]
