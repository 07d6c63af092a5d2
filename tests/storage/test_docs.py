"""What the docs say about the store interface matches the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hybridserve.storage import base

ARCHITECTURE = Path(__file__).parents[2] / "docs" / "architecture.md"


def test_the_interface_docstring_names_every_member() -> None:
    members = {n for n in vars(base.KVStore) if not n.startswith("_")}
    members |= set(base.KVStore.__annotations__)
    assert {"get_many", "put_columns", "ping", "close", "url"} <= members
    doc = base.__doc__ or ""
    assert sorted(m for m in members if f"``{m}" not in doc) == []


def test_architecture_states_the_redis_script_chunk() -> None:
    pytest.importorskip("redis")
    from hybridserve.storage.redis import _CHUNK

    found = re.search(r"one Lua script per chunk of\s+(\d+)\s+keys", ARCHITECTURE.read_text())
    assert found is not None
    assert int(found.group(1)) == _CHUNK
