"""Engine factory and migration runner (see the package docstring)."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.errors import ConfigError, StoreError

__all__ = [
    "MIGRATION_PACKAGES",
    "create_engine",
    "dialect_name",
    "is_postgres",
    "metadata",
    "migrate",
    "normalize_url",
    "read_only",
]

#: Execution option of a connection opened by :func:`read_only`.
_READ_ONLY = "dadam_read_only"

#: Naming convention so constraint names are stable across SQLite and PostgreSQL migrations.
metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: Packages that own a ``migrations/`` folder with an alembic branch, in dependency order.
MIGRATION_PACKAGES: tuple[str, ...] = ("connector", "catalog", "contracts", "metering")


def normalize_url(url: str) -> str:
    """Map ``postgres://`` and ``postgresql://`` to the psycopg 3 driver; leave others alone."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def dialect_name(engine: Engine) -> str:
    return engine.dialect.name


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def _sqlite_setup(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        if conn.get_execution_options().get(_READ_ONLY):
            # A read: a deferred transaction reads a WAL snapshot, neither waiting for the writer
            # nor holding it up.
            conn.exec_driver_sql("BEGIN")
            return
        # One writer at a time, taken at BEGIN: no SQLITE_BUSY on lock upgrade mid-transaction.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


@contextlib.contextmanager
def read_only(engine: Engine) -> Iterator[sa.Connection]:
    """A connection for reads only (``engine.connect()`` otherwise takes SQLite's write lock).

    On SQLite its transaction is a deferred ``BEGIN``: it reads a consistent snapshot without
    waiting for a writer or making one wait. Do not write through it: on SQLite a deferred
    transaction that reads and then writes can fail with SQLITE_BUSY. On PostgreSQL it is a plain
    connection (reads never wait for writers there).
    """
    with engine.connect() as conn:
        yield conn.execution_options(**{_READ_ONLY: True})


def create_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> Engine:
    """An engine for ``url`` (SQLite file or PostgreSQL), configured for dadam's access patterns."""
    url = normalize_url(url)
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"DADAM_DATABASE_URL is not a valid database URL: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30})
        _sqlite_setup(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return sa.create_engine(
            url,
            echo=echo,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            # psycopg prepares a statement after five executions and PostgreSQL may then keep a
            # generic plan made while a table was nearly empty (a sequential scan for ``id = ANY``):
            # ledger batches ran 3-4x slower once tables grew. Custom plans cost a little planning.
            connect_args={"options": "-c plan_cache_mode=force_custom_plan"},
        )
    raise ConfigError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite:/// or postgresql://")


def _version_locations() -> list[str]:
    locations = []
    for pkg in MIGRATION_PACKAGES:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(next(iter(spec.submodule_search_locations))) / "migrations"
        if folder.is_dir() and any(folder.glob("*.py")):
            locations.append(str(folder))
    return locations


def migrate(engine: Engine, target: str = "heads") -> None:
    """Upgrade the schema to ``target`` (every package's head by default). Safe to call on every start."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("version_locations", " ".join(_version_locations()))
    cfg.set_main_option("path_separator", "space")
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, target)
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(f"database migration failed: {exc}") from exc
