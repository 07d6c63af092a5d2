"""The error tree in ``errors.py`` is the one users read: every class in it is drawn in its
docstring and in use."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from hybridserve import errors

ERRORS_FILE = Path(errors.__file__)


def _tree() -> list[str]:
    return [
        name
        for name, cls in vars(errors).items()
        if inspect.isclass(cls)
        and issubclass(cls, errors.HybridServeError)
        and cls.__module__ == errors.__name__
    ]


def test_every_error_class_is_used_outside_the_tree() -> None:
    """A class nothing raises (or, for NoFreshPrediction, names in an answer) is a promise
    the docs make and the code does not keep."""
    others = "\n".join(p.read_text() for p in ERRORS_FILE.parent.rglob("*.py") if p != ERRORS_FILE)
    assert {"HybridServeError", "NotFound", "InvalidInput"} <= set(_tree())
    unused = [name for name in _tree() if not re.search(rf"\b{name}\b", others)]
    assert unused == []


def test_every_error_class_is_in_the_drawn_tree() -> None:
    drawn = errors.__doc__ or ""
    assert [name for name in _tree() if not re.search(rf"\b{name}\b", drawn)] == []
