"""Transfer processes over DSP 2025-1 (both roles) on the durable process framework.

The provider starts a pull transfer as soon as the request is valid: the agreement exists, was
concluded with this caller, and the format is offered (``HttpData-PULL``). Its
TransferStartMessage carries an EDR (``dataAddress``: the data plane endpoint plus a short-lived
access token bound to the transfer and the consumer). The consumer stores the EDR and hands it to
applications through the management API. Suspend, resume, complete and terminate work from both
sides. Every received message is acknowledged only after its state change is committed; replies
go through the outbox (retries, backoff, TERMINATED with the reason when delivery fails).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from connector.errors import LocalProtocolError, NotFoundError, RemoteProtocolError, ValidationError
from connector.identity import Caller
from connector.store import read_only
from contracts._negotiation_states import State
from contracts._process import (
    Delivery,
    OutboxMessage,
    Worker,
    body_digest,
    enqueue,
    insert_process,
    lock_process,
    outbox,
    process_table,
    record_received,
    save_state,
    write_tx,
)
from contracts._tables import negotiations
from contracts._transfer_states import TERMINAL, Command, TState, command, receive, wire_state
from vocab import DSP_CONTEXT

__all__ = [
    "FORMATS",
    "PULL_FORMATS",
    "PUSH_FORMATS",
    "EdrIssuer",
    "TransferManager",
    "masked_address",
    "retirements",
    "transfers",
]

KIND = "transfer"
#: Transfer types this connector serves (the catalog's distribution formats).
PULL_FORMATS = frozenset({"HttpData-PULL"})
PUSH_FORMATS = frozenset({"HttpData-PUSH", "AmazonS3-PUSH"})
FORMATS = PULL_FORMATS | PUSH_FORMATS
#: endpoint properties never shown in management views or logs
SECRET_PROPERTIES = frozenset({"authorization", "secretAccessKey", "sessionToken", "secretKey", "password"})


def address_properties(address: dict[str, Any]) -> dict[str, str]:
    """A DSP DataAddress's ``endpointProperties`` as a name -> value dict."""
    out: dict[str, str] = {}
    for prop in address.get("endpointProperties") or []:
        if isinstance(prop, dict) and isinstance(prop.get("name"), str):
            out[prop["name"].rsplit("/", 1)[-1]] = str(prop.get("value", ""))
    return out


def masked_address(address: dict[str, Any]) -> dict[str, Any]:
    """A push destination with its secrets replaced by ``**********``."""
    out = dict(address)
    out["endpointProperties"] = [
        {**p, "value": "**********"}
        if isinstance(p, dict) and str(p.get("name", "")).rsplit("/", 1)[-1] in SECRET_PROPERTIES
        else p
        for p in address.get("endpointProperties") or []
    ]
    return out


def _push_destination_problems(fmt: str, address: Any) -> list[str]:
    if not isinstance(address, dict):
        return [f"dataAddress: required for {fmt} (where to push the data)"]
    props = address_properties(address)
    endpoint = str(address.get("endpoint") or "")
    if fmt == "HttpData-PUSH" and not endpoint.startswith(("http://", "https://")):
        return ["dataAddress.endpoint: the http(s) URL to push to"]
    if fmt == "AmazonS3-PUSH":
        problems = [
            f"dataAddress.endpointProperties: {k} required" for k in ("bucketName",) if not props.get(k)
        ]
        if not endpoint.startswith(("http://", "https://")):
            problems.append("dataAddress.endpoint: the S3 endpoint URL")
        return problems
    return []


transfers = process_table(
    "tp_transfers",
    sa.Column("role", sa.String(8), nullable=False),
    sa.Column("provider_pid", sa.String(200), nullable=True),
    sa.Column("consumer_pid", sa.String(200), nullable=True),
    sa.Column("agreement_id", sa.String(500), nullable=False),
    sa.Column("dataset_id", sa.String(500), nullable=True),
    sa.Column("format", sa.String(100), nullable=False),
    sa.Column("counterparty_address", sa.Text, nullable=False),
    sa.Column("counterparty_id", sa.String(500), nullable=True),
    #: consumer side: the EDR received in the TransferStartMessage (compact JSON)
    sa.Column("data_address", sa.Text, nullable=True),
    #: consumer side, signaling mode: the bytes its data plane reported it received (a push)
    sa.Column("received_bytes", sa.BigInteger, nullable=True),
    sa.Index("ix_tp_transfers_role_provider_pid", "role", "provider_pid"),
    sa.Index("ix_tp_transfers_role_consumer_pid", "role", "consumer_pid"),
)


retirements = sa.Table(
    "agreement_retirements",
    transfers.metadata,
    sa.Column("agreement_id", sa.String(500), primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("retired_at", sa.Float, nullable=False),
)


class DataPlane(Protocol):
    """Signaling mode (decision record 0452, ``contracts._dataflow.DataPlaneSignals``): the data
    plane is told of a transfer's changes over HTTP instead of reading them (provider and consumer)."""

    def start(self, conn: Connection, row: Any, *, resume: bool) -> None: ...

    def prepare(self, conn: Connection, row: Any) -> None: ...

    def follow(
        self,
        conn: Connection,
        row: Any,
        new: TState,
        reason: str | None,
        *,
        address: dict[str, Any] | None = None,
    ) -> None: ...


class EdrIssuer(Protocol):
    """Makes the ``dataAddress`` of a pull transfer (the data plane)."""

    def data_address(self, transfer_id: str, consumer_did: str) -> dict[str, Any]: ...


def _msg(mtype: str, provider_pid: str | None, consumer_pid: str | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"@context": [DSP_CONTEXT], "@type": mtype}
    if provider_pid is not None:
        body["providerPid"] = provider_pid
    if consumer_pid is not None:
        body["consumerPid"] = consumer_pid
    body.update(extra)
    return body


_ENDPOINT = {
    "TransferStartMessage": "start",
    "TransferSuspensionMessage": "suspension",
    "TransferCompletionMessage": "completion",
    "TransferTerminationMessage": "termination",
}


class TransferManager:
    """Both roles of the transfer process. Register :attr:`handler` with the outbox worker."""

    kind = KIND
    table = transfers
    terminal_states = frozenset(int(s) for s in TERMINAL)

    def __init__(
        self,
        engine: Engine,
        *,
        participant_id: str,
        dsp_base_url: str,
        worker: Worker,
        edr: EdrIssuer | None = None,
        state_timeout_s: float = 3600.0,
        on_change: Callable[[dict[str, Any]], None] | None = None,
        scripts: Callable[[str], dict[str, list[Command]] | None] | None = None,
        script_delay_s: float = 0.7,
        before_start: Callable[[str, str, str], str | None] | None = None,
        after_end: Callable[[str], None] | None = None,
        on_started: Callable[[Connection, Mapping[Any, Any]], None] | None = None,
        formats_for: Callable[[str], frozenset[str] | None] | None = None,
    ) -> None:
        self.engine = engine
        self.participant_id = participant_id
        self.dsp_base_url = dsp_base_url.rstrip("/")
        self.worker = worker
        self.edr = edr
        self.state_timeout_s = state_timeout_s
        self.on_change = on_change
        #: Conformance only: agreement id -> {trigger: [commands]}; replaces the normal reactions.
        self.scripts = scripts
        self.script_delay_s = script_delay_s
        self._queued: dict[str, list[Command]] = {}
        #: before_start(transfer id, consumer DID, agreement id) -> None, or why the transfer may not
        #: start (e.g. the data bank could not reserve funds); runs outside any transaction.
        self.before_start = before_start
        #: after_end(transfer id): the transfer was terminated, by the peer or by us (e.g. release a
        #: reservation); runs outside any transaction.
        self.after_end = after_end
        #: on_started(conn, row): a provider transfer became STARTED (start or resume delivered), in
        #: the same transaction: the data plane queues its push here.
        self.on_started = on_started
        #: formats_for(dataset id) -> the transfer types the dataset is offered with (None: unknown)
        self.formats_for = formats_for
        #: signaling mode: the data plane driven over HTTP (None: it reads the database, decision 0451)
        self.dataplane: DataPlane | None = None
        worker.handlers[KIND] = self  # share the negotiation worker: one outbox, one claim loop

    def _timeout(self, state: TState) -> float | None:
        """STARTED and SUSPENDED are where a transfer lives (for as long as the agreement allows):
        they do not time out; every waiting state does; terminal states have no deadline."""
        if state in TERMINAL or state in (TState.STARTED, TState.SUSPENDED):
            return None
        return self.state_timeout_s

    # ------------------------------------------------------------------ views
    @staticmethod
    def view(row: Any) -> dict[str, Any]:
        """The management view of a transfer row (the EDR included, consumer side)."""
        state = TState(row["state"])
        address = orjson.loads(row["data_address"]) if row["data_address"] else None
        if address is not None and row["format"] in PUSH_FORMATS:
            address = masked_address(address)
        received = {"bytesReceived": row["received_bytes"]} if row["received_bytes"] is not None else {}
        return {
            "id": row["id"],
            "role": row["role"],
            "state": wire_state(state),
            "internalState": state.name,
            "providerPid": row["provider_pid"],
            "consumerPid": row["consumer_pid"],
            "agreementId": row["agreement_id"],
            "datasetId": row["dataset_id"],
            "format": row["format"],
            "counterPartyAddress": row["counterparty_address"],
            "counterPartyId": row["counterparty_id"],
            "dataAddress": address,
            "errorDetail": row["error_detail"],
            "createdAt": row["created_at"],
            "updatedAt": row["updated_at"],
            **received,
        }

    def _ack(self, row: Any) -> dict[str, Any]:
        return _msg(
            "TransferProcess",
            row["provider_pid"],
            row["consumer_pid"],
            state=wire_state(TState(row["state"])),
        )

    def get(self, transfer_id: str) -> dict[str, Any]:
        with read_only(self.engine) as conn:
            row = conn.execute(sa.select(transfers).where(transfers.c.id == transfer_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"no transfer {transfer_id!r}")
        return self.view(row)

    def list_transfers(self, *, offset: int = 0, limit: int = 50) -> list[dict[str, Any]]:
        stmt = sa.select(transfers).order_by(transfers.c.created_at.desc()).offset(offset).limit(limit)
        with read_only(self.engine) as conn:
            return [self.view(r) for r in conn.execute(stmt).mappings()]

    def _row_for_pid(self, conn: Connection, pid: str) -> Mapping[Any, Any]:
        """Our transfer named by ``pid`` (our own pid on either side), locked."""
        row = conn.execute(sa.select(transfers.c.id).where(transfers.c.id == pid)).first()
        if row is None:
            raise NotFoundError(f"no transfer process {pid!r}", context={"providerPid": pid})
        return lock_process(conn, transfers, pid)

    def _check_caller(self, row: Any, caller: Caller) -> None:
        if row["counterparty_id"] and caller.did != row["counterparty_id"]:
            # not yours: the same answer as not found (DSP)
            raise NotFoundError(f"no transfer process {row['id']!r}", context=self._ctx(row))

    @staticmethod
    def _ctx(row: Any) -> dict[str, Any]:
        return {"providerPid": row["provider_pid"], "consumerPid": row["consumer_pid"]}

    def dsp_get(self, pid: str, caller: Caller) -> dict[str, Any]:
        with write_tx(self.engine) as conn:
            row = self._row_for_pid(conn, pid)
            self._check_caller(row, caller)
            return self._ack(row)

    # ------------------------------------------------------------------ provider: request
    def agreement(self, conn: Connection, agreement_id: str) -> Mapping[Any, Any] | None:
        return (
            conn.execute(
                sa.select(negotiations).where(
                    negotiations.c.role == "provider",
                    negotiations.c.agreement_id == agreement_id,
                    negotiations.c.state == int(State.FINALIZED),
                )
            )
            .mappings()
            .first()
        )

    def provider_request(self, body: Any, caller: Caller) -> dict[str, Any]:
        """``POST /transfers/request``: validate, create (idempotent on consumerPid), start a pull."""
        if not isinstance(body, dict) or body.get("@type") != "TransferRequestMessage":
            raise ValidationError(
                "expected a TransferRequestMessage", errors=["@type: TransferRequestMessage"]
            )
        problems = [
            f"{k}: required"
            for k in ("consumerPid", "agreementId", "format", "callbackAddress")
            if not body.get(k)
        ]
        if problems:
            raise ValidationError("invalid TransferRequestMessage", errors=problems)
        consumer_pid, agreement_id = str(body["consumerPid"]), str(body["agreementId"])
        fmt, callback = str(body["format"]), str(body["callbackAddress"]).rstrip("/")
        ctx = {"consumerPid": consumer_pid}
        if not callback.startswith(("http://", "https://")):
            raise ValidationError(
                "unusable callbackAddress", errors=["callbackAddress: http(s) URL"], context=ctx
            )
        offered = None
        if self.formats_for is not None:  # read before the write transaction (SQLite: one writer)
            with read_only(self.engine) as conn:
                found = self.agreement(conn, agreement_id)
            offered = self.formats_for(found["dataset_id"]) if found is not None else None
        with write_tx(self.engine) as conn:
            known = (
                conn.execute(
                    sa.select(transfers).where(
                        transfers.c.role == "provider",
                        transfers.c.consumer_pid == consumer_pid,
                        transfers.c.counterparty_id == caller.did,
                    )
                )
                .mappings()
                .first()
            )
            if known is not None:  # idempotent on consumerPid: the same process back
                return self._ack(known)
            agreement = self.agreement(conn, agreement_id)
            if agreement is None or self.is_retired(conn, agreement_id):
                raise ValidationError(
                    f"no concluded agreement {agreement_id!r}"
                    + (" (retired)" if agreement is not None else ""),
                    errors=["agreementId: unknown or retired"],
                    context=ctx,
                )
            if agreement["counterparty_id"] not in (caller.did, None):
                raise ValidationError(
                    f"agreement {agreement_id!r} was not concluded with {caller.did}",
                    errors=["agreementId: not yours"],
                    context=ctx,
                )
            if fmt not in FORMATS:
                raise ValidationError(
                    f"transfer type {fmt!r} is not served here",
                    errors=[f"format: one of {sorted(FORMATS)}"],
                    context=ctx,
                )
            if offered is not None and fmt not in offered:
                raise ValidationError(
                    f"dataset {agreement['dataset_id']!r} is not offered as {fmt}",
                    errors=[f"format: one of {sorted(offered)}"],
                    context=ctx,
                )
            destination = None
            if fmt in PUSH_FORMATS:
                problems = _push_destination_problems(fmt, body.get("dataAddress"))
                if problems:
                    raise ValidationError(f"invalid {fmt} destination", errors=problems, context=ctx)
                destination = orjson.dumps(body["dataAddress"]).decode()
            pid = f"urn:uuid:{uuid.uuid4()}"
            now = time.time()
            insert_process(
                conn, transfers, pid, TState.REQUESTED, timeout_s=self.state_timeout_s, now=now,
                role="provider", provider_pid=pid, consumer_pid=consumer_pid, agreement_id=agreement_id,
                dataset_id=agreement["dataset_id"], format=fmt, counterparty_address=callback,
                counterparty_id=caller.did, data_address=destination,
            )  # fmt: skip
            if body.get("@id"):
                record_received(conn, KIND, pid, str(body["@id"]), body_digest(body))
            row = lock_process(conn, transfers, pid)
            ack = self._ack(row)
            script = self.scripts(agreement_id) if self.scripts else None
            if script is not None:
                self._follow(conn, row, list(script.get("request", [])), delay=self.script_delay_s)
            elif self.before_start is None:
                self._command(conn, row, Command.START)
        if script is None and self.before_start is not None:
            refusal = self.before_start(pid, caller.did, agreement_id)  # outside the transaction
            with write_tx(self.engine) as conn:
                row = lock_process(conn, transfers, pid)
                if refusal is None:
                    self._command(conn, row, Command.START)
                else:
                    self._command(conn, row, Command.TERMINATE, refusal)
        self.worker.wake()
        return ack

    # ------------------------------------------------------------------ messages from the peer
    def receive(self, endpoint: str, pid: str, body: Any, caller: Caller) -> dict[str, Any]:
        """A message for one of our transfers (provider or consumer side: the pid decides)."""
        expected = {v: k for k, v in _ENDPOINT.items()}[endpoint]
        if not isinstance(body, dict) or body.get("@type") != expected:
            raise ValidationError(
                f"expected a {expected}", errors=[f"@type: {expected}"], context={"providerPid": pid}
            )
        with write_tx(self.engine) as conn:
            row = self._row_for_pid(conn, pid)
            self._check_caller(row, caller)
            ctx = self._ctx(row)
            own, theirs = (
                ("providerPid", "consumerPid")
                if row["role"] == "provider"
                else ("consumerPid", "providerPid")
            )
            if body.get(own) != pid or (
                row[theirs.replace("Pid", "_pid")] and body.get(theirs) != row[theirs.replace("Pid", "_pid")]
            ):
                raise RemoteProtocolError(
                    "providerPid/consumerPid do not match this transfer process", context=ctx
                )
            seen = record_received(
                conn, KIND, pid, str(body["@id"]) if body.get("@id") else None, body_digest(body)
            )
            if seen == "duplicate":
                return self._ack(row)
            if seen == "conflict":
                raise RemoteProtocolError("message id already used for another message", context=ctx)
            state = TState(row["state"])
            try:
                nxt = receive(row["role"], state, expected)
            except RemoteProtocolError as exc:
                raise RemoteProtocolError(exc.message, context=ctx) from None
            if expected == "TransferStartMessage" and row["role"] == "consumer":
                address = body.get("dataAddress")
                if address is not None and not isinstance(address, dict):
                    raise ValidationError("dataAddress must be an object", context=ctx)
                values: dict[str, Any] = {
                    "data_address": orjson.dumps(address).decode() if address else row["data_address"]
                }
                if not row["provider_pid"]:
                    values["provider_pid"] = body.get("providerPid")
            else:
                values = {}
            reason = None
            if expected in ("TransferTerminationMessage", "TransferSuspensionMessage"):
                reasons = body.get("reason") or []
                reason = (
                    f"{'terminated' if 'Termination' in expected else 'suspended'} by the counter-party"
                    + (f": {'; '.join(map(str, reasons))}" if reasons else "")
                    + (f" (code {body['code']})" if body.get("code") else "")
                )
            if self.dataplane is not None:
                started = body.get("dataAddress") if expected == "TransferStartMessage" else None
                self.dataplane.follow(conn, row, nxt, reason,
                                      address=started if isinstance(started, dict) else None)  # fmt: skip
            save_state(conn, transfers, pid, nxt, timeout_s=self._timeout(nxt),
                       error_detail=reason, **values)  # fmt: skip
            row = lock_process(conn, transfers, pid)
            if nxt == TState.STARTED and row["role"] == "provider" and self.on_started is not None:
                self.on_started(conn, row)  # the consumer resumed: a paused push goes again
            script = self.scripts(row["agreement_id"]) if self.scripts else None
            trigger = {"TransferStartMessage": "start"}.get(expected)
            if script and trigger and script.get(trigger) and nxt == TState.STARTED:
                self._follow(conn, row, list(script[trigger]), delay=self.script_delay_s)
                row = lock_process(conn, transfers, pid)
        self.worker.wake()
        self._changed(row)
        if TState(row["state"]) == TState.TERMINATED and self.after_end is not None:
            self.after_end(pid)
        return self._ack(row)

    # ------------------------------------------------------------------ local commands
    def _command(
        self, conn: Connection, row: Any, cmd: Command, reason: str | None = None, delay: float = 0.0
    ) -> None:
        message, sending, _done = command(row["role"], TState(row["state"]), cmd)
        if cmd == Command.TERMINATE and row["role"] == "consumer" and not row["provider_pid"]:
            self._terminate_unanswered(conn, row, sending, reason)
            return
        if self.dataplane is not None:
            if (
                row["role"] == "provider"
                and message == "TransferStartMessage"
                and row["format"] in PULL_FORMATS
            ):
                # signaling mode: the data plane starts (or resumes) the flow first; its answer, the
                # EDR, goes into the TransferStartMessage (dataflow_started)
                save_state(conn, transfers, row["id"], sending, timeout_s=self.state_timeout_s)
                self.dataplane.start(conn, row, resume=cmd == Command.RESUME)
                return
            self.dataplane.follow(conn, row, sending, reason)
        extra: dict[str, Any] = {}
        if message == "TransferStartMessage" and row["role"] == "provider" and row["format"] in PULL_FORMATS:
            if self.edr is None:
                raise RemoteProtocolError("no data plane is configured to serve this transfer")
            extra["dataAddress"] = self.edr.data_address(row["id"], row["counterparty_id"] or "")
        if message == "TransferTerminationMessage" and reason:
            extra["reason"] = [reason]
        peer_pid = row["consumer_pid"] if row["role"] == "provider" else row["provider_pid"]
        body = _msg(message, row["provider_pid"], row["consumer_pid"], **extra)
        url = f"{row['counterparty_address']}/transfers/{peer_pid}/{_ENDPOINT[message]}"
        save_state(conn, transfers, row["id"], sending, timeout_s=self.state_timeout_s,
                   error_detail=reason if cmd == Command.TERMINATE else None)  # fmt: skip
        enqueue(conn, KIND, row["id"], url, body, audience=row["counterparty_id"], delay_s=delay)

    def _terminate_unanswered(self, conn: Connection, row: Any, sending: TState, reason: str | None) -> None:
        """Consumer termination before the provider acknowledged our request: its pid, the address
        of a TransferTerminationMessage, is not known yet. While the request waits in the outbox the
        transfer stays TERMINATING and the termination goes out once the acknowledgement brings
        the pid (:meth:`on_delivered`); a request that never went out (its data plane was still
        preparing) or was answered without a pid ends here, nobody to tell."""
        waiting = conn.execute(
            sa.select(outbox.c.id).where(
                outbox.c.kind == KIND,
                outbox.c.process_id == row["id"],
                outbox.c.message_type == "TransferRequestMessage",
                outbox.c.status == "pending",
            )
        ).first()
        state = sending if waiting is not None else TState.TERMINATED
        if self.dataplane is not None:
            self.dataplane.follow(conn, row, state, reason)
        timeout_s = self.state_timeout_s if state == sending else None
        save_state(conn, transfers, row["id"], state, timeout_s=timeout_s, error_detail=reason)

    def _follow(self, conn: Connection, row: Any, steps: list[Command], *, delay: float) -> None:
        """Run the first scripted step now (after ``delay``); the rest after each acknowledgement."""
        if not steps:
            return
        self._queued[row["id"]] = steps[1:]
        self._command(conn, row, steps[0], delay=delay)

    def dataflow_started(self, conn: Connection, row: Any, address: dict[str, Any]) -> None:
        """Signaling mode: the data plane started (or resumed) the pull flow of ``row`` (STARTING or
        RESUMING) and answered ``address``: send the TransferStartMessage with it."""
        body = _msg("TransferStartMessage", row["provider_pid"], row["consumer_pid"], dataAddress=address)
        url = f"{row['counterparty_address']}/transfers/{row['consumer_pid']}/start"
        enqueue(conn, KIND, row["id"], url, body, audience=row["counterparty_id"])

    def end_in(self, conn: Connection, row: Any, reason: str) -> None:
        """Terminate a live transfer with ``reason`` inside the caller's transaction, telling the
        peer when the state table allows it (else TERMINATED at once). Call :meth:`sent` after.

        A consumer transfer the provider has not answered yet (no provider pid: e.g. its data plane
        could not prepare the flow, so the request never went out) ends here without a message."""
        try:
            if row["role"] == "consumer" and not row["provider_pid"]:
                raise LocalProtocolError("the provider does not know this transfer process")
            self._command(conn, row, Command.TERMINATE, reason)
        except LocalProtocolError:  # e.g. RESUMING: end here; the peer's next message is refused
            if self.dataplane is not None:
                self.dataplane.follow(conn, row, TState.TERMINATED, reason)
            save_state(conn, transfers, row["id"], TState.TERMINATED, timeout_s=None, error_detail=reason)

    def command_in(self, conn: Connection, transfer_id: str, cmd: Command, reason: str | None = None) -> None:
        """Steer one of our transfers inside the caller's transaction (the data plane completes or
        terminates a push in the same commit that records its outcome). Call :meth:`sent` after."""
        row = lock_process(conn, transfers, transfer_id)
        self._command(conn, row, cmd, reason)

    def sent(self, transfer_id: str, cmd: Command) -> None:
        """After :meth:`command_in` committed: wake the sender, release what a termination frees."""
        self.worker.wake()
        if cmd == Command.TERMINATE and self.after_end is not None:
            self.after_end(transfer_id)

    def run_command(self, transfer_id: str, cmd: Command, reason: str | None = None) -> dict[str, Any]:
        """Management: suspend / resume / complete / terminate one of our transfers."""
        with write_tx(self.engine) as conn:
            row = lock_process(conn, transfers, transfer_id)
            self._command(conn, row, cmd, reason)
            row = lock_process(conn, transfers, transfer_id)
        self.worker.wake()
        if cmd == Command.TERMINATE and self.after_end is not None:
            self.after_end(transfer_id)  # a terminated transfer uses nothing more: release at once
        return self.view(row)

    def start_transfer(
        self,
        counterparty_address: str,
        agreement_id: str,
        *,
        fmt: str = "HttpData-PULL",
        counterparty_id: str | None = None,
        destination: Callable[[str], dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Consumer: request a transfer under ``agreement_id`` from the provider's DSP base.

        For a push, ``destination(consumer pid)`` gives the DSP DataAddress the provider pushes to.
        Signaling mode: the consumer's data plane prepares the flow first (``prepare``; for an
        ``HttpData-PUSH`` without ``destination`` it provides its push inbox); its answer's address
        goes into the TransferRequestMessage (:meth:`send_request`)."""
        if fmt not in FORMATS:
            raise ValidationError(
                f"unknown transfer type {fmt!r}", errors=[f"format: one of {sorted(FORMATS)}"]
            )
        pid = f"urn:uuid:{uuid.uuid4()}"
        now = time.time()
        address = counterparty_address.rstrip("/")
        requested: dict[str, Any] | None = None
        if fmt in PUSH_FORMATS:
            if destination is None and not (self.dataplane is not None and fmt == "HttpData-PUSH"):
                raise ValidationError(f"{fmt} needs a destination", errors=["dataDestination: required"])
            requested = destination(pid) if destination is not None else None
            problems = [] if requested is None else _push_destination_problems(fmt, requested)
            if problems:
                raise ValidationError(f"invalid {fmt} destination", errors=problems)
        with write_tx(self.engine) as conn:
            insert_process(
                conn, transfers, pid, TState.REQUESTING, timeout_s=self.state_timeout_s, now=now,
                role="consumer", provider_pid=None, consumer_pid=pid, agreement_id=agreement_id,
                dataset_id=None, format=fmt, counterparty_address=address, counterparty_id=counterparty_id,
                data_address=orjson.dumps(requested).decode() if requested else None,
            )  # fmt: skip
            row = lock_process(conn, transfers, pid)
            if self.dataplane is not None:
                self.dataplane.prepare(conn, row)
            else:
                self.send_request(conn, row, requested)
            row = lock_process(conn, transfers, pid)
        self.worker.wake()
        return self.view(row)

    def send_request(self, conn: Connection, row: Any, address: dict[str, Any] | None) -> None:
        """Queue the TransferRequestMessage of consumer transfer ``row`` (REQUESTING), with
        ``address`` as the push destination (kept as the transfer's ``data_address``)."""
        extra: dict[str, Any] = {}
        if row["format"] in PUSH_FORMATS:
            problems = _push_destination_problems(row["format"], address)
            if problems:
                raise ValidationError(f"invalid {row['format']} destination", errors=problems)
            extra["dataAddress"] = address
            conn.execute(
                transfers.update()
                .where(transfers.c.id == row["id"])
                .values(data_address=orjson.dumps(address).decode())
            )
        body = _msg("TransferRequestMessage", None, row["id"], agreementId=row["agreement_id"],
                    format=row["format"], callbackAddress=self.dsp_base_url, **extra)  # fmt: skip
        enqueue(conn, KIND, row["id"], f"{row['counterparty_address']}/transfers/request", body,
                audience=row["counterparty_id"])  # fmt: skip

    def retire_agreement(self, agreement_id: str, reason: str) -> dict[str, Any]:
        """Retire an agreement (provider): no new transfers, every live transfer is terminated with ``reason``."""
        with write_tx(self.engine) as conn:
            if self.agreement(conn, agreement_id) is None:
                raise NotFoundError(f"no concluded agreement {agreement_id!r} as provider")
            if conn.execute(
                sa.select(retirements.c.agreement_id).where(retirements.c.agreement_id == agreement_id)
            ).first():
                raise ValidationError(f"agreement {agreement_id!r} is already retired")
            conn.execute(
                retirements.insert().values(agreement_id=agreement_id, reason=reason, retired_at=time.time())
            )
            live = (
                conn.execute(
                    sa.select(transfers.c.id).where(
                        transfers.c.role == "provider",
                        transfers.c.agreement_id == agreement_id,
                        transfers.c.state.in_(
                            [int(s) for s in (TState.REQUESTED, TState.STARTED, TState.SUSPENDED)]
                        ),
                    )
                )
                .scalars()
                .all()
            )
            for tid in live:
                row = lock_process(conn, transfers, tid)
                self._command(conn, row, Command.TERMINATE, f"agreement retired: {reason}")
        self.worker.wake()
        return {
            "agreementId": agreement_id,
            "retired": True,
            "reason": reason,
            "terminatedTransfers": list(live),
        }

    def is_retired(self, conn: Connection, agreement_id: str) -> bool:
        return (
            conn.execute(
                sa.select(retirements.c.agreement_id).where(retirements.c.agreement_id == agreement_id)
            ).first()
            is not None
        )

    # ------------------------------------------------------------------ worker callbacks
    def on_delivered(
        self, conn: Connection, process: Mapping[Any, Any], message: OutboxMessage, delivery: Delivery
    ) -> None:
        state = TState(process["state"])
        if message.message_type == "TransferRequestMessage":
            ack = delivery.response_json if isinstance(delivery.response_json, dict) else {}
            provider_pid = ack.get("providerPid")
            if state == TState.REQUESTING:
                save_state(conn, transfers, process["id"], TState.REQUESTED, timeout_s=self.state_timeout_s,
                           provider_pid=provider_pid)  # fmt: skip
                script = self.scripts(process["agreement_id"]) if self.scripts else None
                if script and script.get("ack:request"):
                    self._follow(conn, lock_process(conn, transfers, process["id"]),
                                 list(script["ack:request"]), delay=self.script_delay_s)  # fmt: skip
            elif state == TState.TERMINATING and not process["provider_pid"]:
                # terminated by us while the request was on its way: tell the provider now
                if provider_pid:
                    conn.execute(
                        transfers.update()
                        .where(transfers.c.id == process["id"])
                        .values(provider_pid=provider_pid)
                    )
                    row = lock_process(conn, transfers, process["id"])
                    reason = process["error_detail"]
                    body = _msg("TransferTerminationMessage", provider_pid, row["consumer_pid"],
                                **({"reason": [reason]} if reason else {}))  # fmt: skip
                    url = f"{row['counterparty_address']}/transfers/{provider_pid}/termination"
                    enqueue(conn, KIND, row["id"], url, body, audience=row["counterparty_id"])
                else:
                    save_state(conn, transfers, process["id"], TState.TERMINATED, timeout_s=None)
            elif provider_pid and not process["provider_pid"]:  # the start overtook the ACK
                conn.execute(
                    transfers.update()
                    .where(transfers.c.id == process["id"])
                    .values(provider_pid=provider_pid)
                )
            return
        done = {
            "TransferStartMessage": TState.STARTED,
            "TransferSuspensionMessage": TState.SUSPENDED,
            "TransferCompletionMessage": TState.COMPLETED,
            "TransferTerminationMessage": TState.TERMINATED,
        }[message.message_type]
        sending = {TState.STARTING, TState.RESUMING, TState.SUSPENDING, TState.COMPLETING, TState.TERMINATING}
        if state in sending:
            save_state(
                conn,
                transfers,
                process["id"],
                done,
                timeout_s=self._timeout(done),
            )
            if done == TState.STARTED and process["role"] == "provider" and self.on_started is not None:
                self.on_started(conn, lock_process(conn, transfers, process["id"]))
            if done == TState.STARTED and process["role"] == "consumer" and self.dataplane is not None:
                self.dataplane.follow(conn, process, done, None)  # our resume was acknowledged
            rest = self._queued.pop(process["id"], [])
            if rest and done not in TERMINAL:
                self._follow(
                    conn, lock_process(conn, transfers, process["id"]), rest, delay=self.script_delay_s
                )

    def on_failed(
        self, conn: Connection, process: Mapping[Any, Any], message: OutboxMessage, reason: str
    ) -> None:
        if TState(process["state"]) in TERMINAL:
            return
        detail = f"{message.message_type} could not be delivered: {reason}"
        if self.dataplane is not None:
            self.dataplane.follow(conn, process, TState.TERMINATED, detail)
        save_state(conn, transfers, process["id"], TState.TERMINATED, timeout_s=None, error_detail=detail)

    def on_timeout(self, conn: Connection, process: Mapping[Any, Any]) -> None:
        state = TState(process["state"])
        detail = f"timed out in state {state.name} after {self.state_timeout_s:.0f} s"
        if self.dataplane is not None:
            self.dataplane.follow(conn, process, TState.TERMINATED, detail)
        save_state(conn, transfers, process["id"], TState.TERMINATED, timeout_s=None, error_detail=detail)

    def _changed(self, row: Any) -> None:
        if self.on_change is not None:
            self.on_change(self.view(row))
