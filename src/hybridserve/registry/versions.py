"""The registry's records: a model version and an audit-log entry (frozen, JSON-ready)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hybridserve.records import to_iso
from hybridserve.runtimes.base import Signature, Task


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One registered version: what to load, how to call it, and where it came from."""

    name: str
    version: int
    flavour: str
    artifact: str | None
    """Path relative to the artifact directory; ``None`` for the ``callable`` flavour."""
    sha256: str | None
    signature: Signature
    task: Task
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    """``training_data_fingerprint``, ``description``, ``registered_by``, ``registered_at``."""
    callable_ref: str | None = None

    @property
    def ref(self) -> str:
        """``name/version``: the reference that always means this exact version."""
        return f"{self.name}/{self.version}"

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> ModelVersion:
        return cls(
            name=row["name"],
            version=int(row["version"]),
            flavour=row["flavour"],
            artifact=row["artifact"],
            sha256=row["sha256"],
            signature=Signature.from_list(row["signature"]),
            task=row["task"],
            metrics=dict(row["metrics"] or {}),
            lineage={
                "training_data_fingerprint": row["training_data_fingerprint"],
                "description": row["description"],
                "registered_by": row["registered_by"],
                "registered_at": row["registered_at"],
            },
            callable_ref=row["callable_ref"],
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, times as ISO-8601."""
        lineage = dict(self.lineage)
        lineage["registered_at"] = to_iso(lineage.get("registered_at"))
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "flavour": self.flavour,
            "task": self.task,
            "artifact": self.artifact,
            "sha256": self.sha256,
            "callable_ref": self.callable_ref,
            "signature": self.signature.to_list(),
            "metrics": dict(self.metrics),
            "lineage": lineage,
        }


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change to the registry: who did what, when, from which version to which."""

    id: int
    at: float
    actor: str
    action: str
    """``register``, ``promote``, ``rollback``, ``alias``, ``delete_alias``, or ``reload`` (model
    ``*``: a server re-resolved every alias; ``details.changes`` says what moved)."""
    model: str
    alias: str | None
    from_version: int | None
    to_version: int | None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> AuditEntry:
        return cls(
            id=int(row["id"]),
            at=float(row["at"]),
            actor=row["actor"],
            action=row["action"],
            model=row["model"],
            alias=row["alias"],
            from_version=row["from_version"],
            to_version=row["to_version"],
            details=dict(row["details"] or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": to_iso(self.at),
            "actor": self.actor,
            "action": self.action,
            "model": self.model,
            "alias": self.alias,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "details": dict(self.details),
        }
