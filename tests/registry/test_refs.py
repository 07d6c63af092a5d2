"""Model reference syntax: ``name``, ``name/version``, ``name@alias``."""

from __future__ import annotations

import pytest

from hybridserve.errors import InvalidInput
from hybridserve.registry import ModelRef


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fraud@production", ModelRef("fraud", alias="production")),
        ("fraud/3", ModelRef("fraud", version=3)),
        ("fraud", ModelRef("fraud")),
        ("fraud_v2.rules-x@canary", ModelRef("fraud_v2.rules-x", alias="canary")),
    ],
)
def test_parse_and_str_round_trip(text: str, expected: ModelRef) -> None:
    ref = ModelRef.parse(text)
    assert ref == expected
    assert str(ref) == text
    assert ModelRef.parse(ref) is ref


@pytest.mark.parametrize(
    "bad", ["", "fraud@", "fraud/", "fraud/x", "fraud/0", "a@b/3", "-x", "a b"]
)
def test_bad_refs_say_what_is_expected(bad: str) -> None:
    with pytest.raises(InvalidInput, match=r"invalid model reference|versions start at 1"):
        ModelRef.parse(bad)


def test_alias_and_version_together_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="not both"):
        ModelRef("fraud", alias="production", version=2)
