"""The model registry: versions with their artifacts, aliases that move, and an audit log.

See :mod:`.registry` for the transaction rules and :mod:`.refs` for reference syntax.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hybridserve.registry.refs import ModelRef
    from hybridserve.registry.registry import Registry
    from hybridserve.registry.versions import AuditEntry, ModelVersion

__all__ = ["AuditEntry", "ModelRef", "ModelVersion", "Registry"]
_HOME = {"AuditEntry": "versions", "ModelRef": "refs", "ModelVersion": "versions"}
_HOME["Registry"] = "registry"


def __getattr__(name: str) -> Any:
    """The names above, imported when first asked for: what needs only a reference or a
    version (a batch worker) does not import SQLAlchemy with :class:`Registry`."""
    if name in _HOME:
        return getattr(importlib.import_module(f"hybridserve.registry.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
