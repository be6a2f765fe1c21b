"""connector: the data plane's flow table for the HTTP signaling API (decision record 0452).

Revision ID: connector_0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "connector_0004"
down_revision = "connector_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dp_flows",
        sa.Column("flow_id", sa.String(200), nullable=False),
        sa.Column("process_id", sa.String(200), nullable=False),
        sa.Column("agreement_id", sa.String(500), nullable=False),
        sa.Column("dataset_id", sa.String(500), nullable=True),
        sa.Column("transfer_type", sa.String(100), nullable=False),
        sa.Column("participant_id", sa.String(500), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("destination", sa.Text, nullable=True),
        sa.Column("callback_address", sa.Text, nullable=False),
        sa.Column("message_ids", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("callback_event", sa.String(16), nullable=True),
        sa.Column("callback_id", sa.String(64), nullable=True),
        sa.Column("callback_reason", sa.Text, nullable=True),
        sa.Column("callback_attempts", sa.Integer, nullable=False),
        sa.Column("callback_next_at", sa.Float, nullable=True),
        sa.Column("callback_lease_until", sa.Float, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("flow_id", name="pk_dp_flows"),
    )
    op.create_index("ix_dp_flows_callback_next_at", "dp_flows", ["callback_next_at"])


def downgrade() -> None:
    op.drop_index("ix_dp_flows_callback_next_at", table_name="dp_flows")
    op.drop_table("dp_flows")
