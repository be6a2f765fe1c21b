"""metering: price plans referenced from agreements by link and hash.

Revision ID: metering_0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "metering_0004"
down_revision = "metering_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bank_price_plans",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("hash", sa.String(80), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bank_price_plans"),
    )


def downgrade() -> None:
    op.drop_table("bank_price_plans")
