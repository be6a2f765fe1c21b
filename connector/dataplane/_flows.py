"""The data plane's flow table (``dp_flows``): one row per data flow a control plane started over
the signaling API (decision record 0452). Flow id = the control plane's transfer process id.

In signaling mode the data plane serves a transfer only while its flow is ``STARTED``: a suspend or
terminate signal takes effect on the next request, and a terminated or completed flow's tokens are
refused. A transfer without a flow row is served by the database mode's rules (decision 0451).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from connector.store import metadata

__all__ = ["FLOW_STATES", "flow_state", "flows"]

#: PREPARED, STARTED, SUSPENDED, COMPLETED, TERMINATED
FLOW_STATES = ("PREPARED", "STARTED", "SUSPENDED", "COMPLETED", "TERMINATED")

flows = sa.Table(
    "dp_flows",
    metadata,
    sa.Column("flow_id", sa.String(200), primary_key=True),
    #: the control plane's transfer process id (the provider pid)
    sa.Column("process_id", sa.String(200), nullable=False),
    sa.Column("agreement_id", sa.String(500), nullable=False),
    sa.Column("dataset_id", sa.String(500), nullable=True),
    sa.Column("transfer_type", sa.String(100), nullable=False),
    #: provider flow: the consumer's participant id (DID), EDR tokens are bound to it; consumer flow:
    #: the provider's
    sa.Column("participant_id", sa.String(500), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    #: push: the destination DataAddress (compact JSON); provider pull: null (the EDR is issued per
    #: answer); consumer pull: the provider's EDR from the TransferStartMessage
    sa.Column("destination", sa.Text, nullable=True),
    #: where the data plane calls back (``<base>/transfers/<process id>/dataflow/<event>``)
    sa.Column("callback_address", sa.Text, nullable=False),
    #: signal message ids already applied (JSON list, newest last): a resent signal changes nothing
    sa.Column("message_ids", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    #: a callback not yet acknowledged by the control plane: completed | errored (resent until acked)
    sa.Column("callback_event", sa.String(16), nullable=True),
    sa.Column("callback_id", sa.String(64), nullable=True),
    sa.Column("callback_reason", sa.Text, nullable=True),
    sa.Column("callback_attempts", sa.Integer, nullable=False),
    sa.Column("callback_next_at", sa.Float, nullable=True),
    sa.Column("callback_lease_until", sa.Float, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    #: ``consumer`` for a flow opened with ``prepare`` (the consumer's data plane: it receives, never
    #: pushes); null for a provider flow opened with ``start`` (migration connector_0005)
    sa.Column("side", sa.String(8), nullable=True),
    #: consumer push flows: the bytes the push inbox received
    sa.Column("received_bytes", sa.BigInteger, nullable=True),
    sa.Index("ix_dp_flows_callback_next_at", "callback_next_at"),
)

_STATE = sa.select(flows.c.state).where(flows.c.flow_id == sa.bindparam("_fid"))


def flow_state(conn: Connection, flow_id: str) -> str | None:
    """The state of the signaled flow ``flow_id``; None when the transfer is not a signaled flow."""
    state = conn.execute(_STATE, {"_fid": flow_id}).scalar()
    return None if state is None else str(state)
