"""contracts: agreement retirements.

Revision ID: contracts_0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "contracts_0003"
down_revision = "contracts_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agreement_retirements",
        sa.Column("agreement_id", sa.String(500), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("retired_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("agreement_id", name="pk_agreement_retirements"),
    )
