"""Canary and shadow selection: sticky by a hash of the entity key.

The same entity always lands on the same side of a split, on every server process and host
(the hash is stable, unlike Python's salted ``hash``), so a user never flips between versions.
"""

from __future__ import annotations

import hashlib


def bucket(entity: str, salt: str = "") -> float:
    """A stable number in [0, 1) for ``entity``."""
    digest = hashlib.blake2b((salt + entity).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def in_share(entity: str, percent: float, salt: str = "") -> bool:
    """Is ``entity`` in the first ``percent`` percent of the hash space?"""
    if percent >= 100:
        return True
    if percent <= 0:
        return False
    return bucket(entity, salt) * 100 < percent
