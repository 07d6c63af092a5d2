"""The registry's tables (SQLAlchemy Core) and how to open a database that holds them.

One schema serves SQLite (the embedded default, in WAL mode) and PostgreSQL (a shared
deployment). ``schema_version`` records the layout's version so a later release can migrate
it, and so an older release refuses a database it does not understand instead of misreading it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Engine,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from hybridserve._optional import require
from hybridserve.errors import ConfigError, StoreError
from hybridserve.storage.sqlite import while_locked
from hybridserve.urls import masked_url

SCHEMA_VERSION = 2
"""Bump with a migration in :func:`ensure_schema` whenever the tables change.

2: the review queue, the rollouts and the ``reference_profiles`` table (new tables only:
created when an older database is opened)."""

metadata = MetaData()

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

models = Table(
    "models",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("created_at", Float, nullable=False),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("name", String(128), ForeignKey("models.name"), primary_key=True),
    # Numbered per model from 1; the primary key makes two registrations racing for the
    # same number fail, and the loser retries with the next one.
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("flavour", String(32), nullable=False),
    Column("artifact", String(1024)),
    Column("sha256", String(64)),
    Column("callable_ref", String(512)),
    Column("signature", JSON, nullable=False),
    Column("task", String(32), nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("training_data_fingerprint", String(256)),
    Column("description", Text, nullable=False, default=""),
    Column("registered_by", String(256), nullable=False),
    Column("registered_at", Float, nullable=False),
)

aliases = Table(
    "aliases",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("alias", String(128), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("updated_by", String(256), nullable=False),
    ForeignKeyConstraint(["name", "version"], ["model_versions.name", "model_versions.version"]),
)

reference_profiles = Table(
    "reference_profiles",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("profile", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    ForeignKeyConstraint(["name", "version"], ["model_versions.name", "model_versions.version"]),
)
"""A version's reference profile (``quality/profile.py``): its training data's feature bins
and score distribution, for drift."""

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(256), nullable=False),
    Column("action", String(32), nullable=False),
    Column("model", String(128), nullable=False),
    Column("alias", String(128)),
    Column("from_version", Integer),
    Column("to_version", Integer),
    Column("details", JSON, nullable=False),
    Index("audit_log_model_alias", "model", "alias", "id"),
)


review_cases = Table(
    "review_cases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("queue", String(128), nullable=False),
    Column("route", String(128), nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("entity", String(512), nullable=False),
    Column("score", Float),
    Column("model", String(128)),
    Column("model_version", Integer),
    Column("source", String(64), nullable=False),
    Column("degraded", Boolean, nullable=False),
    Column("reasons", JSON, nullable=False),
    # What the answer was made from: the trail, feature values, request features.
    Column("context", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("status", String(16), nullable=False),
    Column("label", JSON),
    Column("resolved_by", String(256)),
    Column("resolved_at", Float),
    Column("note", Text),
    Index("review_cases_queue_status", "queue", "status", "id"),
    Index("review_cases_route_resolved", "route", "resolved_at"),
)

rollouts = Table(
    "rollouts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("route", String(128), nullable=False),
    Column("model", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("alias", String(128), nullable=False),
    Column("plan", JSON, nullable=False),
    Column("state", String(16), nullable=False),
    # Index into the plan's stages: the shadow step (when there is one), then the canary steps.
    Column("step", Integer, nullable=False),
    Column("step_started_at", Float, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("started_by", String(256), nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("lease_owner", String(128)),
    Column("lease_until", Float),
    Index("rollouts_route_state", "route", "state"),
)

rollout_stats = Table(
    "rollout_stats",
    metadata,
    Column("rollout_id", Integer, ForeignKey("rollouts.id"), primary_key=True),
    Column("step", Integer, primary_key=True, autoincrement=False),
    Column("worker", String(128), primary_key=True),
    Column("arm", String(16), primary_key=True),
    # The worker's running totals for this step and arm (requests, errors, latencies...).
    Column("counts", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
)


def _sqlite_pragmas(engine: Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN and cannot take the write lock up
    # front; we issue BEGIN ourselves so writers use BEGIN IMMEDIATE: they queue on
    # busy_timeout instead of failing when two registrations upgrade read locks at once.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        while_locked(lambda: cur.execute("PRAGMA journal_mode=WAL"))
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        write = conn.get_execution_options().get("hs_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def make_engine(url: str) -> Engine:
    """An engine for ``sqlite:///path`` or ``postgresql://...`` (psycopg 3 driver)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"invalid registry URL {masked_url(url)!r}: "
            "expected sqlite:///path or postgresql://user@host/db"
        ) from None
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        require("psycopg", "postgres")
        parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=5)
    if backend != "sqlite":
        raise ConfigError(
            f"unsupported registry URL {masked_url(url)!r}: "
            "expected sqlite:///path or postgresql://..."
        )
    database = parsed.database or ":memory:"
    if database == ":memory:":
        engine = create_engine(
            "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        from pathlib import Path

        try:
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot open the registry database {masked_url(url)}: {exc}") from exc
        engine = create_engine(parsed, connect_args={"timeout": 30.0})
    _sqlite_pragmas(engine)
    return engine


def _where(engine: Engine) -> str:
    return masked_url(engine.url.render_as_string(hide_password=False))


def ensure_schema(engine: Engine) -> None:
    """Create missing tables, record the schema version, refuse a newer schema."""
    try:
        if inspect(engine).has_table("schema_version"):
            with engine.connect() as conn:
                found = conn.execute(select(schema_version.c.version)).scalar()
            if found is not None and found > SCHEMA_VERSION:
                raise ConfigError(
                    f"the registry database {_where(engine)} "
                    f"has schema version {found}, but this hybridserve only knows versions up "
                    f"to {SCHEMA_VERSION}: upgrade hybridserve to use it"
                )
            if found == SCHEMA_VERSION:
                return
        with engine.connect().execution_options(hs_write=True) as conn, conn.begin():
            if engine.dialect.name == "postgresql":
                # Two processes opening a fresh database must not both create the tables.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(72057594037927936)")
            metadata.create_all(conn, checkfirst=True)
            found = conn.execute(select(schema_version.c.version)).scalar()
            if found is None:
                conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
            elif found < SCHEMA_VERSION:  # the new tables were created just above
                conn.execute(schema_version.update().values(version=SCHEMA_VERSION))
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot open the registry database {_where(engine)}: {exc}") from exc
