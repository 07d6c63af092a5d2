"""The model registry: versions, aliases and an audit log over one metadata database.

Metadata lives in SQLite (embedded default) or PostgreSQL (shared); artifacts live in an
:class:`~.artifacts.ArtifactStore`. Every write runs in one transaction that first locks the
model's row (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so
version numbers and alias moves of one model are serialised across processes and hosts;
the primary key on ``(name, version)`` backs that up, and a registration that loses a race
retries. Servers poll :meth:`Registry.resolve_version`, one indexed read, to follow aliases.
"""

from __future__ import annotations

import getpass
import json
import os
import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from hybridserve.errors import Conflict, InvalidInput, StoreError
from hybridserve.records import now
from hybridserve.registry import queries as q
from hybridserve.registry import schema as t
from hybridserve.registry.artifacts import ArtifactStore
from hybridserve.registry.loading import load_version
from hybridserve.registry.refs import ModelRef, check_name
from hybridserve.registry.versions import AuditEntry, ModelVersion
from hybridserve.runtimes import (
    Compile,
    Runtime,
    Task,
    describe,
    infer_flavour,
    runtime_class,
)

if TYPE_CHECKING:
    from hybridserve.config import Project

_MOVES = ("promote", "rollback", "alias", "delete_alias")
_RETRIES = 8


def current_user() -> str:
    """Who is acting, for lineage and the audit log: ``$USER``, else the login name."""
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def _json_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    try:
        return dict(json.loads(json.dumps(metrics or {}, default=float)))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"metrics must be JSON values or numbers: {exc}") from exc


def _source(
    artifact: Path | str | None, flavour: str | None, callable_ref: str | None
) -> tuple[str, Path | None, Path | str]:
    """Check what to register from; return the flavour, the file (if any), what to load."""
    path = Path(artifact) if artifact is not None else None
    if (path is None) == (callable_ref is None):
        raise InvalidInput("pass either an artifact file or callable_ref='module:function'")
    if path is not None and not path.is_file():
        raise InvalidInput(f"artifact {path} does not exist or is not a file")
    flavour = flavour or ("callable" if path is None else infer_flavour(path))
    runtime_class(flavour)  # unknown flavour: ConfigError listing the known ones
    if (flavour == "callable") != (path is None):
        needs = "callable_ref='module:function'" if path is not None else "an artifact file"
        raise InvalidInput(f"flavour {flavour!r} needs {needs}")
    return flavour, path, path if path is not None else str(callable_ref)


class Registry:
    """Model versions, aliases and their audit log."""

    def __init__(
        self,
        engine: Engine,
        artifacts: ArtifactStore,
        compile: Mapping[str, Compile] | None = None,
    ) -> None:
        self.engine = engine
        self.artifacts = artifacts
        self.compile = dict(compile or {})
        """Each model's ``compile`` option (``models.<name>.compile``; ``auto`` if absent)."""

    @classmethod
    def open(
        cls, url: str, artifacts_dir: str | Path, compile: Mapping[str, Compile] | None = None
    ) -> Registry:
        """Open (creating tables if needed) the registry at ``url`` with its artifact dir."""
        engine = t.make_engine(url)
        try:
            t.ensure_schema(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, ArtifactStore(artifacts_dir), compile)

    @classmethod
    def from_project(cls, project: Project) -> Registry:
        """The registry a project file declares, relative paths resolved against it."""
        return cls.open(
            project.url(project.registry.url),
            project.path(project.registry.artifacts),
            {name: model.compile for name, model in project.models.items()},
        )

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                conn.execution_options(hs_write=write)
                with conn.begin():
                    yield conn
        except OperationalError as exc:
            raise StoreError(f"registry database error: {exc.orig or exc}") from exc

    # -- reads --------------------------------------------------------------------------

    def get(self, ref: str | ModelRef) -> ModelVersion:
        """The version ``fraud@production``, ``fraud/3`` or ``fraud`` (latest) names."""
        parsed = ModelRef.parse(ref)
        with self._tx() as conn:
            return q.fetch_version(conn, parsed)

    def resolve_version(self, name: str, alias: str) -> int:
        """The version ``name@alias`` points at: one indexed read, cheap enough to poll."""
        with self._tx() as conn:
            version = q.alias_version(conn, name, alias)
            if version is None:
                raise q.not_found(conn, ModelRef(name, alias=alias))
            return version

    def list_models(self) -> list[str]:
        """Names of registered models, sorted."""
        with self._tx() as conn:
            return q.model_names(conn)

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first (empty for an unknown model)."""
        with self._tx() as conn:
            return q.versions(conn, name)

    def aliases(self, name: str) -> dict[str, int]:
        """Alias -> version for ``name``."""
        with self._tx() as conn:
            return q.aliases(conn, name)

    def audit(self, name: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest ``limit`` audit entries (of ``name`` only, when given), newest first."""
        with self._tx() as conn:
            return q.audit(conn, name, limit)

    def load(self, ref: str | ModelRef, *, compile: Compile | None = None) -> Runtime:
        """Resolve ``ref``, verify the artifact's sha256, and load it as a :class:`Runtime`.

        ``compile`` overrides the model's ``compile`` option (``"none"`` for a process that
        only needs the signature, such as a batch run's planner)."""
        mv = self.get(ref)
        return load_version(
            mv, self.artifacts, self.compile.get(mv.name, "auto") if compile is None else compile
        )

    # -- writes ---------------------------------------------------------------------------

    def register(
        self,
        name: str,
        artifact: Path | str | None = None,
        *,
        flavour: str | None = None,
        callable_ref: str | None = None,
        features: list[str] | None = None,
        task: Task | None = None,
        metrics: dict[str, Any] | None = None,
        description: str = "",
        training_data_fingerprint: str | None = None,
        registered_by: str | None = None,
    ) -> ModelVersion:
        """Add the next version of ``name`` from an artifact file or a ``module:function``."""
        check_name(name)
        flavour, path, source = _source(artifact, flavour, callable_ref)
        signature, task = describe(flavour, source, features=features, task=task)
        row: dict[str, Any] = {
            "name": name,
            "flavour": flavour,
            "callable_ref": callable_ref,
            "signature": signature.to_list(),
            "task": task,
            "metrics": _json_metrics(metrics),
            "training_data_fingerprint": training_data_fingerprint,
            "description": description,
            "registered_by": registered_by or current_user(),
        }
        for attempt in range(_RETRIES):
            try:
                with self._tx(write=True) as conn:
                    exists = conn.execute(
                        select(t.models.c.name).where(t.models.c.name == name).with_for_update()
                    ).first()
                    if exists is None:
                        conn.execute(t.models.insert().values(name=name, created_at=now()))
                    latest = conn.execute(
                        select(func.max(t.model_versions.c.version)).where(
                            t.model_versions.c.name == name
                        )
                    ).scalar()
                    version = (latest or 0) + 1
                    rel, sha = self.artifacts.put(name, version, path) if path else (None, None)
                    row.update(version=version, artifact=rel, sha256=sha, registered_at=now())
                    conn.execute(t.model_versions.insert().values(**row))
                    q.write_audit(
                        conn,
                        row["registered_by"],
                        "register",
                        name,
                        None,
                        None,
                        version,
                        {"flavour": flavour, "sha256": sha},
                    )
                return ModelVersion.from_row(row)
            except IntegrityError:
                # Another registration created the model or took the number: try the next.
                if attempt == _RETRIES - 1:
                    raise Conflict(f"could not allocate a version of {name!r}; retry") from None
                time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    def set_alias(self, name: str, alias: str, version: int, *, actor: str | None = None) -> None:
        """Point ``name@alias`` at ``version`` (audited as ``alias``)."""
        self._move(name, alias, version, "alias", actor)

    def promote(
        self, name: str, version: int, alias: str = "production", *, actor: str | None = None
    ) -> None:
        """Point ``alias`` (default ``production``) at ``version`` (audited as ``promote``)."""
        self._move(name, alias, version, "promote", actor)

    def rollback(self, name: str, alias: str = "production", *, actor: str | None = None) -> int:
        """Move ``alias`` back to where it pointed before its last move; return that version.

        The last move is read from the audit log, so promote then rollback restores the alias,
        and a second rollback undoes the first.
        """
        check_name(alias, "alias")
        with self._tx(write=True) as conn:
            self._lock_model(conn, name)
            last = conn.execute(
                select(t.audit_log.c.from_version, t.audit_log.c.to_version)
                .where(t.audit_log.c.model == name, t.audit_log.c.alias == alias)
                .where(t.audit_log.c.action.in_(_MOVES))
                .order_by(t.audit_log.c.id.desc())
                .limit(1)
            ).first()
            if last is None or last.from_version is None:
                raise Conflict(f"{name}@{alias} has no earlier version to roll back to")
            self._set(conn, name, alias, last.from_version, "rollback", actor)
            return int(last.from_version)

    def delete_alias(self, name: str, alias: str, *, actor: str | None = None) -> None:
        """Remove ``name@alias`` (audited as ``delete_alias``)."""
        with self._tx(write=True) as conn:
            self._lock_model(conn, name)
            current = q.alias_version(conn, name, alias)
            if current is None:
                raise q.not_found(conn, ModelRef(name, alias=alias))
            conn.execute(
                t.aliases.delete().where(t.aliases.c.name == name, t.aliases.c.alias == alias)
            )
            q.write_audit(conn, actor or current_user(), "delete_alias", name, alias, current, None)

    def set_reference(
        self, ref: str | ModelRef, profile: dict[str, Any], *, actor: str | None = None
    ) -> None:
        """Store (or replace) the reference profile of version ``ref`` (audited)."""
        mv = self.get(ref)
        rp = t.reference_profiles
        with self._tx(write=True) as conn:
            where = (rp.c.name == mv.name, rp.c.version == mv.version)
            conn.execute(rp.delete().where(*where))
            conn.execute(
                rp.insert().values(
                    name=mv.name, version=mv.version, profile=profile, created_at=now()
                )
            )
            details = {"features": sorted(profile.get("features", {})), "rows": profile.get("rows")}
            q.write_audit(
                conn, actor or current_user(), "reference", mv.name, None, None, mv.version, details
            )

    def reference(self, name: str, version: int) -> dict[str, Any] | None:
        """The reference profile stored with ``name/version``, or ``None``."""
        rp = t.reference_profiles
        with self._tx() as conn:
            found = conn.execute(
                select(rp.c.profile).where(rp.c.name == name, rp.c.version == version)
            ).scalar()
        return None if found is None else dict(found)

    def record_action(
        self, action: str, *, actor: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        """Audit an action on the whole registry that moves no alias (a server's ``reload``),
        with model ``*`` and what it did in ``details``."""
        with self._tx(write=True) as conn:
            q.write_audit(conn, actor or current_user(), action, "*", None, None, None, details)

    def _move(self, name: str, alias: str, version: int, action: str, actor: str | None) -> None:
        check_name(alias, "alias")
        with self._tx(write=True) as conn:
            self._lock_model(conn, name)
            self._set(conn, name, alias, version, action, actor)

    def _set(
        self, conn: Connection, name: str, alias: str, version: int, action: str, actor: str | None
    ) -> None:
        mv = t.model_versions
        found = conn.execute(
            select(mv.c.version).where(mv.c.name == name, mv.c.version == version)
        ).first()
        if found is None:
            raise q.not_found(conn, ModelRef(name, version=version))
        who, at = actor or current_user(), now()
        current = q.alias_version(conn, name, alias)
        values = {"version": version, "updated_at": at, "updated_by": who}
        if current is None:
            conn.execute(t.aliases.insert().values(name=name, alias=alias, **values))
        else:
            conn.execute(
                t.aliases.update()
                .where(t.aliases.c.name == name, t.aliases.c.alias == alias)
                .values(**values)
            )
        q.write_audit(conn, who, action, name, alias, current, version)

    def _lock_model(self, conn: Connection, name: str) -> None:
        row = conn.execute(
            select(t.models.c.name).where(t.models.c.name == name).with_for_update()
        ).first()
        if row is None:
            raise q.not_found(conn, ModelRef(name))
