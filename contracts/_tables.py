"""Contract negotiation tables (SQLAlchemy Core). ``migrations/v0001_contracts.py`` creates them.

``cn_negotiations`` is a process table (:func:`contracts._process.process_table`): one row per
negotiation and role, holding the pids, the counter-party, the current offer and the agreement
with both signatures as JSON text. The framework tables ``dsp_outbox`` and ``dsp_inbox`` live in
:mod:`contracts._process` and are shared with the transfer process.
"""

from __future__ import annotations

import sqlalchemy as sa

from contracts._process import inbox, outbox, process_table

__all__ = ["inbox", "negotiations", "outbox"]

negotiations = process_table(
    "cn_negotiations",
    sa.Column("role", sa.String(8), nullable=False),
    sa.Column("provider_pid", sa.String(200), nullable=True),
    sa.Column("consumer_pid", sa.String(200), nullable=True),
    #: Where we send messages: the consumer's callbackAddress, or the provider's DSP base.
    sa.Column("counterparty_address", sa.Text, nullable=False),
    #: The peer's verified DID (provider side) or the DID we expect (consumer side); may be unknown.
    sa.Column("counterparty_id", sa.String(500), nullable=True),
    sa.Column("offer_id", sa.String(500), nullable=True),
    sa.Column("dataset_id", sa.String(500), nullable=True),
    #: The offer currently on the table (the last one sent or received), compact JSON.
    sa.Column("offer", sa.Text, nullable=True),
    #: Which side made the current offer: "consumer" or "provider".
    sa.Column("offer_by", sa.String(8), nullable=True),
    sa.Column("agreement_id", sa.String(500), nullable=True),
    sa.Column("agreement", sa.Text, nullable=True),
    sa.Column("provider_signature", sa.Text, nullable=True),
    sa.Column("consumer_signature", sa.Text, nullable=True),
    #: Webhook URLs (JSON list) notified of every state change (consumer side).
    sa.Column("callbacks", sa.Text, nullable=True),
    #: Free-form extras (JSON object): conformance script, claims used for the decision, ...
    sa.Column("extra", sa.Text, nullable=True),
    sa.Index("ix_cn_negotiations_role_provider_pid", "role", "provider_pid"),
    sa.Index("ix_cn_negotiations_role_consumer_pid", "role", "consumer_pid"),
    sa.Index("ix_cn_negotiations_created_at", "created_at"),
    #: the SSE change poll reads the rows changed since its last look (contracts_0005)
    sa.Index("ix_cn_negotiations_updated_at", "updated_at"),
)
