"""The registry's SQL as functions of a connection, so reads and writes compose inside one
transaction, and the "not found" errors that say what does exist."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, select

from hybridserve.errors import ModelNotFound
from hybridserve.records import now
from hybridserve.registry import schema as t
from hybridserve.registry.refs import ModelRef
from hybridserve.registry.versions import AuditEntry, ModelVersion

mv = t.model_versions


def fetch_version(conn: Connection, ref: ModelRef) -> ModelVersion:
    """The version ``ref`` names (alias, number or latest), or ModelNotFound."""
    query = select(mv).where(mv.c.name == ref.name)
    if ref.alias is not None:
        query = query.join(
            t.aliases, and_(t.aliases.c.name == mv.c.name, t.aliases.c.version == mv.c.version)
        ).where(t.aliases.c.alias == ref.alias)
    elif ref.version is not None:
        query = query.where(mv.c.version == ref.version)
    else:
        query = query.order_by(mv.c.version.desc()).limit(1)
    row = conn.execute(query).mappings().first()
    if row is None:
        raise not_found(conn, ref)
    return ModelVersion.from_row(row)


def alias_version(conn: Connection, name: str, alias: str) -> int | None:
    """The version ``name@alias`` points at (one primary-key lookup), or ``None``."""
    value = conn.execute(
        select(t.aliases.c.version).where(t.aliases.c.name == name, t.aliases.c.alias == alias)
    ).scalar()
    return None if value is None else int(value)


def model_names(conn: Connection) -> list[str]:
    """Registered model names, sorted."""
    query = select(t.models.c.name).order_by(t.models.c.name)
    return [str(n) for n in conn.execute(query).scalars()]


def versions(conn: Connection, name: str) -> list[ModelVersion]:
    rows = conn.execute(select(mv).where(mv.c.name == name).order_by(mv.c.version)).mappings()
    return [ModelVersion.from_row(r) for r in rows]


def aliases(conn: Connection, name: str) -> dict[str, int]:
    query = (
        select(t.aliases.c.alias, t.aliases.c.version)
        .where(t.aliases.c.name == name)
        .order_by(t.aliases.c.alias)
    )
    return {str(a): int(v) for a, v in conn.execute(query)}


def audit(conn: Connection, name: str | None, limit: int) -> list[AuditEntry]:
    query = select(t.audit_log).order_by(t.audit_log.c.id.desc()).limit(limit)
    if name is not None:
        query = query.where(t.audit_log.c.model == name)
    return [AuditEntry.from_row(r) for r in conn.execute(query).mappings()]


def not_found(conn: Connection, ref: ModelRef) -> ModelNotFound:
    """An error for ``ref`` that lists what is registered instead."""
    names = model_names(conn)
    if ref.name not in names:
        known = ", ".join(names) or "none"
        return ModelNotFound(
            f"no model named {ref.name!r} is registered (registered models: {known})",
            model=ref.name,
        )
    if ref.alias is not None:
        known = ", ".join(f"{a} -> {v}" for a, v in aliases(conn, ref.name).items()) or "none"
        return ModelNotFound(
            f"model {ref.name!r} has no alias {ref.alias!r} (aliases: {known})",
            model=ref.name,
            alias=ref.alias,
        )
    numbers = [v.version for v in versions(conn, ref.name)]
    return ModelNotFound(
        f"model {ref.name!r} has no version {ref.version} "
        f"(versions: {', '.join(map(str, numbers)) or 'none'})",
        model=ref.name,
        version=ref.version,
    )


def write_audit(
    conn: Connection,
    actor: str,
    action: str,
    model: str,
    alias: str | None,
    from_version: int | None,
    to_version: int | None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one row to the audit log (in the caller's transaction)."""
    conn.execute(
        t.audit_log.insert().values(
            at=now(),
            actor=actor,
            action=action,
            model=model,
            alias=alias,
            from_version=from_version,
            to_version=to_version,
            details=details or {},
        )
    )
