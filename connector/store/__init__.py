"""Database access shared by every package: engine factory, metadata, migrations.

* SQLite (default, file under ``data_dir``) runs in WAL mode; write transactions start with
  ``BEGIN IMMEDIATE`` so there is exactly one writer at a time and no lock-upgrade deadlocks;
  :func:`read_only` connections start a deferred ``BEGIN`` and read a snapshot without waiting.
* PostgreSQL is used when ``DADAM_DATABASE_URL`` is a ``postgresql://`` URL (psycopg 3); workers
  claim rows with ``SELECT ... FOR UPDATE SKIP LOCKED``.
* Tables are SQLAlchemy Core :class:`~sqlalchemy.Table` objects on the shared :data:`metadata`;
  each package owns its tables and its alembic migration branch (``<package>/migrations/``).
  :func:`migrate` upgrades every branch to its head.
"""

from __future__ import annotations

from connector.store._engine import (
    MIGRATION_PACKAGES,
    create_engine,
    dialect_name,
    is_postgres,
    metadata,
    migrate,
    normalize_url,
    read_only,
)

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
