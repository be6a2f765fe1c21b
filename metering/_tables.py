"""Data bank tables (SQLAlchemy Core on the shared metadata; migrations ``metering_0001`` to ``0003``)."""

from __future__ import annotations

import sqlalchemy as sa

from connector.store import metadata

__all__ = [
    "accounts",
    "audit_log",
    "checkpoints",
    "event_billing",
    "failed_ids",
    "periods",
    "price_plans",
    "receipts",
    "statements",
    "transfers",
    "usage_events",
    "usage_totals",
]

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
    #: the expiry sweep's: only the transfers still pending (metering_0007)
    sa.Index(
        "ix_ledger_transfers_pending",
        "created_at",
        postgresql_where=sa.text("pending_status = 'pending'"),
        sqlite_where=sa.text("pending_status = 'pending'"),
    ),
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

#: Running totals of an agreement's successful (``outcome = "ok"``) usage events, kept in the
#: transaction that inserts them, so enforcement reads one row instead of summing the history.
usage_totals = sa.Table(
    "usage_totals",
    metadata,
    sa.Column("agreement_id", sa.String(300), primary_key=True),
    sa.Column("events", sa.BigInteger, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("first_started_at", sa.Float, nullable=False),
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
    #: periodic receipts (metering_0003): the accounting period billed and the receipt's number in it
    sa.Column("period_start", sa.BigInteger, nullable=True),
    sa.Column("sequence", sa.Integer, nullable=True),
)

#: closed accounting periods (fixed length, aligned to the epoch); a period without a row is closed
#: when it ends at or before the latest closed period's end (periods close in order)
periods = sa.Table(
    "bank_periods",
    metadata,
    sa.Column("start", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("end", sa.BigInteger, nullable=False),
    sa.Column("closed_at", sa.Float, nullable=False),
    #: manual | auto
    sa.Column("closed_by", sa.String(16), nullable=False),
)

#: how a usage event is billed: the period it belongs to on the bill, whether it is a late
#: adjustment of a closed period, and the one receipt that billed it (the key makes that unique)
event_billing = sa.Table(
    "bank_event_billing",
    metadata,
    sa.Column("event_id", sa.String(200), primary_key=True),
    #: the period whose receipt bills the event (NULL: billed by a receipt without a period)
    sa.Column("period_start", sa.BigInteger, nullable=True),
    #: set for an event that arrived after its period closed: that period (it is billed in a later one)
    sa.Column("adjustment_of", sa.BigInteger, nullable=True),
    sa.Column("receipt_id", sa.String(200), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
)


#: immutable price plans referenced from agreements by link and hash (metering._priceplan)
price_plans = sa.Table(
    "bank_price_plans",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("hash", sa.String(80), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


#: periodic settlement statements per counterparty, as exchanged (signed by us, and by them)
statements = sa.Table(
    "bank_statements",
    metadata,
    sa.Column("party", sa.String(300), primary_key=True),
    sa.Column("period_start", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("provider_signature", sa.Text, nullable=False),
    sa.Column("consumer_signature", sa.Text, nullable=True),
    sa.Column("dispute", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
)
