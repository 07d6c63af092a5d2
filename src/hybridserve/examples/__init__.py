"""Example projects shipped with the package, each a self-contained sub-package.

An example exposes ``PROJECT_FILE`` and ``scaffold(dest, *, force=False) -> Path``; this
module finds them by name, so ``hybridserve init --example NAME`` needs no list of its own.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol, cast

from hybridserve.errors import ConfigError

EXAMPLES: tuple[str, ...] = ("fraud",)


class _Example(Protocol):
    PROJECT_FILE: Path

    def scaffold(self, dest: str | Path, *, force: bool = False) -> Path: ...


def scaffold(name: str, dest: str | Path, *, force: bool = False) -> Path:
    """Lay out example ``name`` in ``dest``; return the path of its project file."""
    if name not in EXAMPLES:
        raise ConfigError(f"unknown example {name!r}; available: {', '.join(EXAMPLES)}")
    module = cast(_Example, importlib.import_module(f"{__name__}.{name}"))
    return module.scaffold(dest, force=force)
