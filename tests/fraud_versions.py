"""Register more versions of the fraud example's model, for rollout and reload tests.

The new version is the same fitted estimator under a new number: its scores equal version 1's,
so a test can tell versions apart only by the ``model_version`` a response reports.
"""

from __future__ import annotations

from hybridserve.config import Project
from hybridserve.registry import Registry


def add_fraud_version(registry: Registry, project: Project, alias: str | None = None) -> int:
    """Register ``fraud/1``'s artifact again; point ``alias`` at it when given."""
    v1 = registry.get("fraud/1")
    assert v1.artifact is not None
    artifact = project.path(project.registry.artifacts) / v1.artifact
    mv = registry.register("fraud", artifact, flavour="sklearn", features=v1.signature.names)
    if alias is not None:
        registry.promote("fraud", mv.version, alias=alias, actor="tests")
    return mv.version


def add_fraud_version_offline(project: Project, alias: str | None = None) -> int:
    """:func:`add_fraud_version` before any server has opened the project's registry."""
    registry = Registry.from_project(project)
    try:
        return add_fraud_version(registry, project, alias)
    finally:
        registry.close()
