"""The model registry: versions with their artifacts, aliases that move, and an audit log.

See :mod:`.registry` for the transaction rules and :mod:`.refs` for reference syntax.
"""

from __future__ import annotations

from hybridserve.registry.refs import ModelRef
from hybridserve.registry.registry import Registry
from hybridserve.registry.versions import AuditEntry, ModelVersion

__all__ = ["AuditEntry", "ModelRef", "ModelVersion", "Registry"]
