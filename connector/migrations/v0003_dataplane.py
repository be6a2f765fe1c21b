"""connector: data plane tables (EDR token generations, durable pushes).

Revision ID: connector_0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "connector_0003"
down_revision = "connector_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dp_tokens",
        sa.Column("transfer_id", sa.String(200), nullable=False),
        sa.Column("issued_gen", sa.Integer, nullable=False),
        sa.Column("min_gen", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("transfer_id", name="pk_dp_tokens"),
    )
    op.create_table(
        "dp_pushes",
        sa.Column("transfer_id", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_at", sa.Float, nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", sa.Float, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("records", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("transfer_id", name="pk_dp_pushes"),
    )
    op.create_index("ix_dp_pushes_status_next_at", "dp_pushes", ["status", "next_at"])


def downgrade() -> None:
    op.drop_index("ix_dp_pushes_status_next_at", table_name="dp_pushes")
    op.drop_table("dp_pushes")
    op.drop_table("dp_tokens")
