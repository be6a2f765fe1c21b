"""catalog: datasets, dataset terms, policies, contract definitions, revision counter.

Revision ID: catalog_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "catalog_0001"
down_revision = None
branch_labels = ("catalog",)
depends_on = "connector_0001"


def upgrade() -> None:
    op.create_table(
        "catalog_datasets",
        sa.Column("id", sa.String(500), nullable=False),
        sa.Column("category", sa.String(32), nullable=False),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("data_address", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_catalog_datasets"),
    )
    op.create_index("ix_catalog_datasets_category", "catalog_datasets", ["category"])
    op.create_table(
        "catalog_dataset_terms",
        sa.Column("dataset_id", sa.String(500), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(500), nullable=False),
        sa.PrimaryKeyConstraint("dataset_id", "kind", "value", name="pk_catalog_dataset_terms"),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["catalog_datasets.id"],
            ondelete="CASCADE",
            name="fk_catalog_dataset_terms_dataset_id_catalog_datasets",
        ),
    )
    op.create_index("ix_catalog_dataset_terms_kind_value", "catalog_dataset_terms", ["kind", "value"])
    op.create_table(
        "catalog_policies",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_catalog_policies"),
    )
    op.create_table(
        "catalog_contract_definitions",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("access_policy_id", sa.String(200), nullable=False),
        sa.Column("contract_policy_id", sa.String(200), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_catalog_contract_definitions"),
        sa.ForeignKeyConstraint(
            ["access_policy_id"],
            ["catalog_policies.id"],
            ondelete="RESTRICT",
            name="fk_catalog_cd_access_policy",
        ),
        sa.ForeignKeyConstraint(
            ["contract_policy_id"],
            ["catalog_policies.id"],
            ondelete="RESTRICT",
            name="fk_catalog_cd_contract_policy",
        ),
    )
    op.create_index(
        "ix_catalog_contract_definitions_access_policy_id",
        "catalog_contract_definitions",
        ["access_policy_id"],
    )
    op.create_index(
        "ix_catalog_contract_definitions_contract_policy_id",
        "catalog_contract_definitions",
        ["contract_policy_id"],
    )
    revision_table = op.create_table(
        "catalog_revision",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("value", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_catalog_revision"),
    )
    op.bulk_insert(revision_table, [{"id": 1, "value": 0}])


def downgrade() -> None:
    op.drop_table("catalog_revision")
    op.drop_table("catalog_contract_definitions")
    op.drop_table("catalog_policies")
    op.drop_table("catalog_dataset_terms")
    op.drop_table("catalog_datasets")
