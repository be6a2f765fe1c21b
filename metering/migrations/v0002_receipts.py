"""metering: usage receipts (signed by provider and consumer), disputes.

Revision ID: metering_0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "metering_0002"
down_revision = "metering_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bank_receipts",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("agreement_id", sa.String(300), nullable=False),
        sa.Column("counterparty", sa.String(300), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("event_ids", sa.Text, nullable=False),
        sa.Column("provider_signature", sa.Text, nullable=False),
        sa.Column("consumer_signature", sa.Text, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("dispute", sa.Text, nullable=True),
        sa.Column("reserve_ref", sa.String(300), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bank_receipts"),
    )
    op.create_index("ix_bank_receipts_agreement_id", "bank_receipts", ["agreement_id"])
