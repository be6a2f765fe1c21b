"""metering: running totals of each agreement's successful usage events (what enforcement reads).

Revision ID: metering_0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "metering_0006"
down_revision = "metering_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_totals",
        sa.Column("agreement_id", sa.String(300), nullable=False),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("first_started_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("agreement_id", name="pk_usage_totals"),
    )
    # the events recorded before this revision
    op.execute(
        "INSERT INTO usage_totals (agreement_id, events, bytes, first_started_at) "
        "SELECT agreement_id, count(*), coalesce(sum(bytes), 0), min(started_at) "
        "FROM usage_events WHERE outcome = 'ok' GROUP BY agreement_id"
    )


def downgrade() -> None:
    op.drop_table("usage_totals")
