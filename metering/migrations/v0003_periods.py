"""metering: accounting periods, event billing (periodic receipts, late adjustments).

Revision ID: metering_0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "metering_0003"
down_revision = "metering_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bank_periods",
        sa.Column("start", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("end", sa.BigInteger, nullable=False),
        sa.Column("closed_at", sa.Float, nullable=False),
        sa.Column("closed_by", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("start", name="pk_bank_periods"),
    )
    op.create_table(
        "bank_event_billing",
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("period_start", sa.BigInteger, nullable=True),
        sa.Column("adjustment_of", sa.BigInteger, nullable=True),
        sa.Column("receipt_id", sa.String(200), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_bank_event_billing"),
    )
    op.add_column("bank_receipts", sa.Column("period_start", sa.BigInteger, nullable=True))
    op.add_column("bank_receipts", sa.Column("sequence", sa.Integer, nullable=True))
