"""metering: periodic settlement statements as exchanged with the counterparty.

Revision ID: metering_0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "metering_0005"
down_revision = "metering_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bank_statements",
        sa.Column("party", sa.String(300), nullable=False),
        sa.Column("period_start", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("provider_signature", sa.Text, nullable=False),
        sa.Column("consumer_signature", sa.Text, nullable=True),
        sa.Column("dispute", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("party", "period_start", name="pk_bank_statements"),
    )


def downgrade() -> None:
    op.drop_table("bank_statements")
