"""contracts: negotiations, DSP outbox and inbox (shared with transfers).

Revision ID: contracts_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "contracts_0001"
down_revision = None
branch_labels = ("contracts",)
depends_on = "connector_0001"


def upgrade() -> None:
    op.create_table(
        "dsp_outbox",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("process_id", sa.String(200), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("message_type", sa.String(100), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("audience", sa.String(500), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("not_before", sa.Float, nullable=False),
        sa.Column("lease_owner", sa.String(100), nullable=True),
        sa.Column("lease_until", sa.Float, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("sent_at", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_dsp_outbox"),
    )
    op.create_index("ix_dsp_outbox_status_not_before", "dsp_outbox", ["status", "not_before"])
    op.create_index("ix_dsp_outbox_kind_process_id_seq", "dsp_outbox", ["kind", "process_id", "seq"])
    op.create_table(
        "dsp_inbox",
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("message_id", sa.String(500), nullable=False),
        sa.Column("process_id", sa.String(200), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("kind", "message_id", name="pk_dsp_inbox"),
    )
    op.create_table(
        "cn_negotiations",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("state_since", sa.Float, nullable=False),
        sa.Column("deadline", sa.Float, nullable=True),
        sa.Column("pending", sa.Boolean, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("error_detail", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("provider_pid", sa.String(200), nullable=True),
        sa.Column("consumer_pid", sa.String(200), nullable=True),
        sa.Column("counterparty_address", sa.Text, nullable=False),
        sa.Column("counterparty_id", sa.String(500), nullable=True),
        sa.Column("offer_id", sa.String(500), nullable=True),
        sa.Column("dataset_id", sa.String(500), nullable=True),
        sa.Column("offer", sa.Text, nullable=True),
        sa.Column("offer_by", sa.String(8), nullable=True),
        sa.Column("agreement_id", sa.String(500), nullable=True),
        sa.Column("agreement", sa.Text, nullable=True),
        sa.Column("provider_signature", sa.Text, nullable=True),
        sa.Column("consumer_signature", sa.Text, nullable=True),
        sa.Column("callbacks", sa.Text, nullable=True),
        sa.Column("extra", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_cn_negotiations"),
    )
    op.create_index("ix_cn_negotiations_deadline", "cn_negotiations", ["deadline"])
    op.create_index("ix_cn_negotiations_role_provider_pid", "cn_negotiations", ["role", "provider_pid"])
    op.create_index("ix_cn_negotiations_role_consumer_pid", "cn_negotiations", ["role", "consumer_pid"])
    op.create_index("ix_cn_negotiations_created_at", "cn_negotiations", ["created_at"])
