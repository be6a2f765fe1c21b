"""metering: ledger accounts and transfers, failed ids, audit log, usage events.

Revision ID: metering_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "metering_0001"
down_revision = None
branch_labels = ("metering",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_accounts",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("ledger", sa.String(32), nullable=False),
        sa.Column("code", sa.Integer, nullable=False),
        sa.Column("flags", sa.Integer, nullable=False),
        sa.Column("debits_pending", sa.BigInteger, nullable=False),
        sa.Column("debits_posted", sa.BigInteger, nullable=False),
        sa.Column("credits_pending", sa.BigInteger, nullable=False),
        sa.Column("credits_posted", sa.BigInteger, nullable=False),
        sa.Column("user_data", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_accounts"),
    )
    op.create_table(
        "ledger_transfers",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("debit_account_id", sa.String(200), nullable=False),
        sa.Column("credit_account_id", sa.String(200), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("pending_id", sa.String(200), nullable=True),
        sa.Column("ledger", sa.String(32), nullable=False),
        sa.Column("code", sa.Integer, nullable=False),
        sa.Column("flags", sa.Integer, nullable=False),
        sa.Column("timeout_s", sa.Integer, nullable=False),
        sa.Column("user_data", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("pending_status", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_transfers"),
    )
    op.create_index("ix_ledger_transfers_debit_account_id", "ledger_transfers", ["debit_account_id"])
    op.create_index("ix_ledger_transfers_credit_account_id", "ledger_transfers", ["credit_account_id"])
    op.create_table(
        "ledger_failed_ids",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("result", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_failed_ids"),
    )
    op.create_table(
        "bank_audit_log",
        sa.Column("seq", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_bank_audit_log"),
    )
    op.create_table(
        "bank_audit_checkpoints",
        sa.Column("size", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("root", sa.String(64), nullable=False),
        sa.Column("signature", sa.Text, nullable=False),
        sa.Column("cosignature", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("size", name="pk_bank_audit_checkpoints"),
    )
    op.create_table(
        "usage_events",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("agreement_id", sa.String(300), nullable=False),
        sa.Column("transfer_id", sa.String(300), nullable=False),
        sa.Column("dataset_id", sa.String(300), nullable=False),
        sa.Column("category", sa.String(32), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("records", sa.BigInteger, nullable=False),
        sa.Column("calls", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float, nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("consumer", sa.String(300), nullable=False),
        sa.Column("provider", sa.String(300), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_usage_events"),
    )
    op.create_index("ix_usage_events_agreement_id", "usage_events", ["agreement_id"])
