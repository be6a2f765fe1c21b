"""metering: index the pending transfers, for the expiry sweep.

The data bank's housekeeping voids pending transfers whose timeout passed, every round. It read
``ledger_transfers`` whole to find them, and that table only grows. A partial index holds just
the transfers still pending (few at any time), by creation time.

Revision ID: metering_0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "metering_0007"
down_revision = "metering_0006"
branch_labels = None
depends_on = None

_PENDING = sa.text("pending_status = 'pending'")


def upgrade() -> None:
    op.create_index(
        "ix_ledger_transfers_pending",
        "ledger_transfers",
        ["created_at"],
        postgresql_where=_PENDING,
        sqlite_where=_PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_ledger_transfers_pending", table_name="ledger_transfers")
