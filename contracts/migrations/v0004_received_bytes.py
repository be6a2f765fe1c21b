"""contracts: what a consumer's data plane reported it received for a transfer (signaling mode,
decision record 0452 as amended).

Revision ID: contracts_0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "contracts_0004"
down_revision = "contracts_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tp_transfers") as batch:
        batch.add_column(sa.Column("received_bytes", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tp_transfers") as batch:
        batch.drop_column("received_bytes")
