"""connector: identity tables (token replay store, partner directory).

Revision ID: connector_0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "connector_0002"
down_revision = "connector_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dsp_token_replay",
        sa.Column("token_key", sa.String(512), nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("token_key", name="pk_dsp_token_replay"),
    )
    op.create_index("ix_dsp_token_replay_expires_at", "dsp_token_replay", ["expires_at"])
    op.create_table(
        "partners",
        sa.Column("did", sa.String(512), nullable=False),
        sa.Column("claims", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("did", name="pk_partners"),
    )
