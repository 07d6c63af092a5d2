"""Storage backends behind one small key-value interface (see :mod:`.base`).

Backends are named by URL scheme and imported lazily, so ``redis`` stays an optional extra.
A user may also pass ``module:Class`` as the scheme's target in ``BACKENDS``.
"""

from __future__ import annotations

from typing import cast

from hybridserve._optional import import_string
from hybridserve.errors import ConfigError
from hybridserve.storage.base import RUN_SCHEMA, Entry, KVStore, Write, run_rows, wins
from hybridserve.urls import masked_url

BACKENDS: dict[str, str] = {
    "memory": "hybridserve.storage.memory:MemoryStore",
    "sqlite": "hybridserve.storage.sqlite:SQLiteStore",
    "redis": "hybridserve.storage.redis:RedisStore",
    "rediss": "hybridserve.storage.redis:RedisStore",
    "unix": "hybridserve.storage.redis:RedisStore",
}


def open_store(url: str, prefix: str = "") -> KVStore:
    """Open the store a URL names: ``memory://``, ``sqlite:///path``, ``redis://host:port/db``."""
    scheme = url.partition("://")[0].lower()
    target = BACKENDS.get(scheme)
    if target is None:
        raise ConfigError(
            f"unknown store URL {masked_url(url)!r}: expected one of "
            + ", ".join(f"{s}://" for s in sorted(BACKENDS))
        )
    cls = import_string(target)
    return cast(KVStore, cls(url, prefix))  # type: ignore[operator]


__all__ = ["BACKENDS", "RUN_SCHEMA", "Entry", "KVStore", "Write", "open_store", "run_rows", "wins"]
