"""The data bank: metering, pricing, usage receipts, a double-entry ledger and a tamper-evident audit log.

* :class:`Ledger`: TigerBeetle-shaped accounts and transfers (two-phase, linked, result codes).
* :func:`record_usage_events`: the data plane's usage events, deduplicated by id, in its transaction;
  :func:`usage_so_far`: an agreement's running totals (what enforcement reads), kept there too.
* :func:`price_terms_from_odrl`, :func:`charge_minor_units`: charges from an agreement's compensate duty.
* :func:`make_receipt`, :func:`compare_receipt`: receipts with a Merkle root of the event ids.
* :func:`issue_due_receipts`, :func:`close_period`, :func:`list_periods`: accounting periods, a receipt
  per closed period (and per N events), late usage billed as an adjustment.
* :func:`verify_audit`, :func:`make_checkpoint`: the hash-chained log and signed RFC 6962 checkpoints
  (:func:`unsigned_entries`: how many entries the latest checkpoint does not cover yet).
* :func:`split_revenue`: integer revenue shares that always sum to the total.
"""

from __future__ import annotations

from metering._api import bank_peer_router, bank_router, verify_bank
from metering._audit import (
    Checkpoint,
    append_audit,
    make_checkpoint,
    merkle_root,
    unsigned_entries,
    verify_audit,
)
from metering._batcher import LedgerBatcher
from metering._ledger import Account, AccountFlags, Ledger, Result, Transfer, TransferFlags, new_transfers
from metering._periods import close_due_periods, close_period, issue_due_receipts, list_periods, period_of
from metering._settlement import Settlement, countersign
from metering._usage import (
    IngestResult,
    PriceTerms,
    Receipt,
    UnitOfCount,
    UsageEvent,
    charge_minor_units,
    compare_receipt,
    events_root,
    make_period_receipt,
    make_receipt,
    price_terms_from_engine,
    price_terms_from_odrl,
    query_usage_events,
    record_usage_events,
    split_revenue,
    usage_so_far,
)

__all__ = [
    "Account",
    "AccountFlags",
    "Checkpoint",
    "IngestResult",
    "Ledger",
    "LedgerBatcher",
    "PriceTerms",
    "Receipt",
    "Result",
    "Settlement",
    "Transfer",
    "TransferFlags",
    "UnitOfCount",
    "UsageEvent",
    "append_audit",
    "bank_peer_router",
    "bank_router",
    "charge_minor_units",
    "close_due_periods",
    "close_period",
    "compare_receipt",
    "countersign",
    "events_root",
    "issue_due_receipts",
    "list_periods",
    "make_checkpoint",
    "make_period_receipt",
    "make_receipt",
    "merkle_root",
    "new_transfers",
    "period_of",
    "price_terms_from_engine",
    "price_terms_from_odrl",
    "query_usage_events",
    "record_usage_events",
    "split_revenue",
    "unsigned_entries",
    "usage_so_far",
    "verify_audit",
    "verify_bank",
]
