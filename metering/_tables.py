"""Data bank tables (SQLAlchemy Core on the shared metadata; migration ``metering_0001``)."""

from __future__ import annotations

import sqlalchemy as sa

from connector.store import metadata

__all__ = ["accounts", "audit_log", "checkpoints", "failed_ids", "receipts", "transfers", "usage_events"]

accounts = sa.Table(
    "ledger_accounts",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("ledger", sa.String(32), nullable=False),
    sa.Column("code", sa.Integer, nullable=False),
    sa.Column("flags", sa.Integer, nullable=False),
    sa.Column("debits_pending", sa.BigInteger, nullable=False),
    sa.Column("debits_posted", sa.BigInteger, nullable=False),
    sa.Column("credits_pending", sa.BigInteger, nullable=False),
    sa.Column("credits_posted", sa.BigInteger, nullable=False),
    sa.Column("user_data", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

transfers = sa.Table(
    "ledger_transfers",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("debit_account_id", sa.String(200), nullable=False, index=True),
    sa.Column("credit_account_id", sa.String(200), nullable=False, index=True),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("pending_id", sa.String(200), nullable=True),
    sa.Column("ledger", sa.String(32), nullable=False),
    sa.Column("code", sa.Integer, nullable=False),
    sa.Column("flags", sa.Integer, nullable=False),
    sa.Column("timeout_s", sa.Integer, nullable=False),
    sa.Column("user_data", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    #: pending transfers only: pending | posted | voided | expired (else "")
    sa.Column("pending_status", sa.String(16), nullable=False),
)

failed_ids = sa.Table(
    "ledger_failed_ids",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("result", sa.String(64), nullable=False),
)

audit_log = sa.Table(
    "bank_audit_log",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

usage_events = sa.Table(
    "usage_events",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("agreement_id", sa.String(300), nullable=False, index=True),
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
)

checkpoints = sa.Table(
    "bank_audit_checkpoints",
    metadata,
    sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("root", sa.String(64), nullable=False),
    sa.Column("signature", sa.Text, nullable=False),
    sa.Column("cosignature", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

receipts = sa.Table(
    "bank_receipts",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("agreement_id", sa.String(300), nullable=False, index=True),
    sa.Column("counterparty", sa.String(300), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("event_ids", sa.Text, nullable=False),
    sa.Column("provider_signature", sa.Text, nullable=False),
    sa.Column("consumer_signature", sa.Text, nullable=True),
    #: issued | settled | disputed
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("dispute", sa.Text, nullable=True),
    sa.Column("reserve_ref", sa.String(300), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
)
