"""Catalog tables (SQLAlchemy Core). ``migrations/v0001_catalog.py`` creates exactly these.

Each entity is one row holding its model as JSON plus the columns queries need. Keywords and
conformsTo values of datasets are denormalised into ``catalog_dataset_terms`` for filtering.
``catalog_revision`` is a one-row counter bumped by every write, so readers in any process can
tell cheaply whether their cached catalog is stale.
"""

from __future__ import annotations

import sqlalchemy as sa

from connector.store import metadata

__all__ = ["contract_definitions", "dataset_terms", "datasets", "policies", "revision"]

datasets = sa.Table(
    "catalog_datasets",
    metadata,
    sa.Column("id", sa.String(500), primary_key=True),
    sa.Column("category", sa.String(32), nullable=False, index=True),
    sa.Column("title", sa.String(500), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("data_address", sa.Text, nullable=False),
    #: the catalog revision of the dataset's last write (incremental reloads; migration v0002)
    sa.Column("revision", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

dataset_terms = sa.Table(
    "catalog_dataset_terms",
    metadata,
    sa.Column(
        "dataset_id",
        sa.String(500),
        sa.ForeignKey("catalog_datasets.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("value", sa.String(500), primary_key=True),
    sa.Index("ix_catalog_dataset_terms_kind_value", "kind", "value"),
)

policies = sa.Table(
    "catalog_policies",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

contract_definitions = sa.Table(
    "catalog_contract_definitions",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("access_policy_id", sa.String(200), nullable=False, index=True),
    sa.Column("contract_policy_id", sa.String(200), nullable=False, index=True),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # explicit names: the naming convention would exceed PostgreSQL's 63-character limit
    sa.ForeignKeyConstraint(
        ["access_policy_id"], ["catalog_policies.id"], ondelete="RESTRICT", name="fk_catalog_cd_access_policy"
    ),
    sa.ForeignKeyConstraint(
        ["contract_policy_id"],
        ["catalog_policies.id"],
        ondelete="RESTRICT",
        name="fk_catalog_cd_contract_policy",
    ),
)

revision = sa.Table(
    "catalog_revision",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("value", sa.BigInteger, nullable=False),
)
