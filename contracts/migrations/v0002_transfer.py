"""contracts: transfer processes (both roles).

Revision ID: contracts_0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "contracts_0002"
down_revision = "contracts_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tp_transfers",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("state_since", sa.Float, nullable=False),
        sa.Column("deadline", sa.Float, nullable=True),
        sa.Column("pending", sa.Boolean, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("error_detail", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("provider_pid", sa.String(200), nullable=True),
        sa.Column("consumer_pid", sa.String(200), nullable=True),
        sa.Column("agreement_id", sa.String(500), nullable=False),
        sa.Column("dataset_id", sa.String(500), nullable=True),
        sa.Column("format", sa.String(100), nullable=False),
        sa.Column("counterparty_address", sa.Text, nullable=False),
        sa.Column("counterparty_id", sa.String(500), nullable=True),
        sa.Column("data_address", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tp_transfers"),
    )
    op.create_index("ix_tp_transfers_deadline", "tp_transfers", ["deadline"])
    op.create_index("ix_tp_transfers_role_provider_pid", "tp_transfers", ["role", "provider_pid"])
    op.create_index("ix_tp_transfers_role_consumer_pid", "tp_transfers", ["role", "consumer_pid"])
