"""connector: consumer-side data flows (decision record 0452, amended): which side of a transfer a
flow serves, and how many bytes a consumer flow's push inbox received.

Revision ID: connector_0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "connector_0005"
down_revision = "connector_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dp_flows") as batch:
        batch.add_column(sa.Column("side", sa.String(8), nullable=True))
        batch.add_column(sa.Column("received_bytes", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dp_flows") as batch:
        batch.drop_column("received_bytes")
        batch.drop_column("side")
