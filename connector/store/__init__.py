"""Database access shared by every package: engine factory, metadata, migrations.

* SQLite (default, file under ``data_dir``) runs in WAL mode; write transactions start with
  ``BEGIN IMMEDIATE`` so there is exactly one writer at a time and no lock-upgrade deadlocks;
  :func:`read_only` connections start a deferred ``BEGIN`` and read a snapshot without waiting.
  :func:`write_tx` writes: on SQLite the threads of a process queue on a Python lock and share
  commits (group commit); :func:`on_commit` runs work after the commit, in commit order.
* PostgreSQL is used when ``DADAM_DATABASE_URL`` is a ``postgresql://`` URL (psycopg 3); workers
  claim rows with ``SELECT ... FOR UPDATE SKIP LOCKED``.
* Tables are SQLAlchemy Core :class:`~sqlalchemy.Table` objects on the shared :data:`metadata`;
  each package owns its tables and its alembic migration branch (``<package>/migrations/``).
  :func:`migrate` upgrades every branch to its head.
* :func:`run` executes a hot, prebuilt statement on the driver's cursor (rows as dicts), about
  a tenth of ``Connection.execute``'s CPU (decision 0406).
"""

from __future__ import annotations

from connector.store._direct import DirectResult, run
from connector.store._engine import (
    MIGRATION_PACKAGES,
    create_engine,
    dialect_name,
    is_postgres,
    metadata,
    migrate,
    normalize_url,
    pg_autocommit,
    read_only,
)
from connector.store._tx import autocommit_tx, on_commit, write_tx

__all__ = [
    "MIGRATION_PACKAGES",
    "DirectResult",
    "autocommit_tx",
    "create_engine",
    "dialect_name",
    "is_postgres",
    "metadata",
    "migrate",
    "normalize_url",
    "on_commit",
    "pg_autocommit",
    "read_only",
    "run",
    "write_tx",
]
