"""The control plane's side of data plane signaling over HTTP (decision record 0452).

With ``DADAM_DATAPLANE_SIGNALING_URL`` set, a transfer drives its data flow on the data plane with
signals (``prepare``, ``start``, ``started``, ``suspend``, ``resume``, ``terminate``, ``completed``)
instead of the data plane reading the transfer's state from the database (decision 0451, still
the default). Both roles are signalled: a provider transfer's flow serves or pushes the data, a
consumer transfer's flow receives it.

Signals are outbox messages of their own kind (``dataflow``) on the shared outbox: written in the
same transaction as the transfer's state change, sent in order per transfer by the process worker,
retried with backoff, resent with the same message id after a crash (the data plane deduplicates),
and when one cannot be delivered the transfer is TERMINATED with the reason (and the consumer told).

* Pull: the provider's START / RESUME first signals ``start`` / ``resume``; the data plane's answer
  carries the DataAddress (EDR), which goes into the DSP TransferStartMessage.
* Push: when the consumer acknowledged the TransferStartMessage (STARTED), ``start`` (or ``resume``)
  with the destination; the data plane pushes and calls back ``completed`` (-> COMPLETED, the
  TransferCompletionMessage) or ``errored`` (-> TERMINATED with the data plane's reason).
* Suspension, termination and completion from either side are signalled as they happen.
* Consumer: ``prepare`` before the TransferRequestMessage (which goes out when the data plane
  answered; a push carries the destination from that answer, e.g. the data plane's push inbox);
  ``started`` when the TransferStartMessage arrives (a pull's with the provider's EDR), ``resume``
  when the transfer is STARTED again. The data plane's ``completed`` (a push received) is
  acknowledged; the provider's TransferCompletionMessage completes the transfer, as DSP says.

The callback endpoints (``POST <base>/transfers/{id}/dataflow/prepared|started|completed|errored``)
deduplicate by message id; a ``completed`` the transfer cannot take yet answers 409 and the data
plane sends it again later.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Connection

from connector.errors import ConflictError, DadamError, NotFoundError, ValidationError
from contracts._process import (
    Delivery,
    OutboxMessage,
    body_digest,
    enqueue,
    lock_process,
    outbox,
    record_received,
    write_tx,
)
from contracts._transfer import PULL_FORMATS, PUSH_FORMATS, TransferManager, transfers
from contracts._transfer_states import TERMINAL, Command, TState

__all__ = ["AUDIENCE", "KIND", "DataPlaneSignals", "dataflow_callback_router"]

log = logging.getLogger("dadam.signaling")

KIND = "dataflow"
#: the outbox audience of signals: the sender signs them with the signaling secret, not DCP
AUDIENCE = "urn:dadam:dataplane-signaling"
_CALLBACK_KIND = "dataflow-callback"

_SUSPENDED = frozenset({TState.SUSPENDING, TState.SUSPENDED})
_TERMINATED = frozenset({TState.TERMINATING, TState.TERMINATED})
_COMPLETED = frozenset({TState.COMPLETING, TState.COMPLETED})


def _type(signal: str) -> str:
    return f"DataFlow{signal.capitalize()}Message"


_SIGNALS = {_type(s): s for s in ("prepare", "start", "suspend", "resume", "terminate", "completed")}


class DataPlaneSignals:
    """Sends a transfer's signals to the data plane (either role) and takes its callbacks."""

    kind = KIND
    table = transfers

    def __init__(self, manager: TransferManager, signaling_url: str, callback_url: str) -> None:
        self.manager = manager
        self.base = signaling_url.rstrip("/")
        self.callback_url = callback_url.rstrip("/")
        self.terminal_states = manager.terminal_states
        self._ended: list[str] = []
        self._ended_lock = threading.Lock()
        manager.dataplane = self
        manager.on_started = self.on_started
        manager.worker.handlers[KIND] = self

    # ------------------------------------------------------------------ sending
    def _enqueue(self, conn: Connection, row: Any, signal: str, **extra: Any) -> None:
        tid = row["id"]
        if signal in ("prepare", "start"):
            url = f"{self.base}/v1/dataflows/{signal}"
            body: dict[str, Any] = {
                "@type": _type(signal), "flowId": tid, "processId": tid, "agreementId": row["agreement_id"],
                "datasetId": row["dataset_id"], "transferType": row["format"],
                "participantId": row["counterparty_id"], "callbackAddress": self.callback_url,
            }  # fmt: skip
            if row["format"] in PUSH_FORMATS and row["data_address"]:
                body["dataAddress"] = orjson.loads(row["data_address"])
        else:
            url = f"{self.base}/v1/dataflows/{quote(tid, safe=':')}/{signal}"
            body = {"@type": _type(signal), "flowId": tid, "processId": tid}
        body.update(extra)
        enqueue(conn, KIND, tid, url, body, audience=AUDIENCE)

    @staticmethod
    def has_flow(conn: Connection, tid: str) -> bool:
        """Whether a flow was started (provider) or prepared (consumer) for this transfer (the signal
        is in the outbox; outbox rows are kept, so this holds for the transfer's life: a pruning job
        must keep them)."""
        found = conn.execute(
            sa.select(outbox.c.id)
            .where(
                outbox.c.kind == KIND,
                outbox.c.process_id == tid,
                outbox.c.message_type.in_((_type("start"), _type("prepare"))),
            )
            .limit(1)
        ).first()
        return found is not None

    def prepare(self, conn: Connection, row: Any) -> None:
        """A new consumer transfer (REQUESTING): the data plane prepares the flow; the request goes
        out when it answered (:meth:`on_delivered`)."""
        self._enqueue(conn, row, "prepare")

    def start(self, conn: Connection, row: Any, *, resume: bool) -> None:
        """Pull START / RESUME (TransferManager._command): the data plane first, the DSP message after."""
        self._enqueue(conn, row, "resume" if resume and self.has_flow(conn, row["id"]) else "start")

    def on_started(self, conn: Connection, row: Mapping[Any, Any]) -> None:
        """A provider transfer became STARTED (the consumer acknowledged our start): push flows start now."""
        if row["format"] not in PUSH_FORMATS:
            return
        self._enqueue(conn, row, "resume" if self.has_flow(conn, row["id"]) else "start")

    def follow(
        self,
        conn: Connection,
        row: Any,
        new: TState,
        reason: str | None,
        *,
        address: dict[str, Any] | None = None,
    ) -> None:
        """The transfer moves from ``row``'s state to ``new``: tell the data plane what that means.
        ``address``: the DataAddress of a TransferStartMessage the consumer received (a pull's EDR)."""
        old = TState(row["state"])
        consumer = row["role"] == "consumer"
        extra: dict[str, Any]
        if consumer and new == TState.STARTED and old in (TState.REQUESTING, TState.REQUESTED):
            signal, extra = "started", {"dataAddress": address} if address else {}
        elif consumer and new == TState.STARTED and old in (TState.SUSPENDED, TState.RESUMING):
            signal, extra = "resume", {"dataAddress": address} if address else {}
        elif new in _SUSPENDED and old not in _SUSPENDED:
            signal, extra = "suspend", {"reason": reason} if reason else {}
        elif new in _TERMINATED and old not in _TERMINATED:
            signal, extra = "terminate", {"reason": reason} if reason else {}
        elif new in _COMPLETED and old not in _COMPLETED:
            signal, extra = "completed", {}
        elif new == TState.STARTED and old == TState.SUSPENDED:  # the consumer resumed
            signal, extra = "resume", {}
        else:
            return
        if self.has_flow(conn, row["id"]):
            self._enqueue(conn, row, signal, **extra)

    # ------------------------------------------------------------------ worker callbacks
    def on_delivered(
        self, conn: Connection, process: Mapping[Any, Any], message: OutboxMessage, delivery: Delivery
    ) -> None:
        signal = _SIGNALS.get(message.message_type)
        state = TState(process["state"])
        if signal == "prepare":
            self._prepared(conn, process, delivery)
            return
        if process["role"] != "provider":
            return
        if signal not in ("start", "resume") or process["format"] not in PULL_FORMATS:
            return
        if state not in (TState.STARTING, TState.RESUMING):
            return  # a resume the consumer asked for, or the transfer moved on meanwhile
        answer = delivery.response_json if isinstance(delivery.response_json, dict) else {}
        address = answer.get("dataAddress")
        if not isinstance(address, dict) or not address.get("endpoint"):
            self._end(conn, process, f"the data plane answered {signal} without a dataAddress")
            return
        self.manager.dataflow_started(conn, process, address)

    def _prepared(self, conn: Connection, process: Mapping[Any, Any], delivery: Delivery) -> None:
        """The consumer's data plane prepared the flow: send the TransferRequestMessage, a push's
        with the destination the data plane answered."""
        if TState(process["state"]) != TState.REQUESTING or process["role"] != "consumer":
            return  # ended meanwhile
        answer = delivery.response_json if isinstance(delivery.response_json, dict) else {}
        address = answer.get("dataAddress") if process["format"] in PUSH_FORMATS else None
        try:
            self.manager.send_request(conn, process, address if isinstance(address, dict) else None)
        except ValidationError as exc:
            detail = "; ".join(getattr(exc, "errors", None) or []) or exc.message
            self._end(
                conn, process, f"the data plane answered prepare without a usable destination: {detail}"
            )

    def on_failed(
        self, conn: Connection, process: Mapping[Any, Any], message: OutboxMessage, reason: str
    ) -> None:
        signal = _SIGNALS.get(message.message_type, message.message_type)
        if TState(process["state"]) in TERMINAL:
            log.warning(
                "data plane signal %s for ended transfer %s failed: %s", signal, process["id"], reason
            )
            return
        self._end(conn, process, f"data plane signal {signal} failed: {reason}")

    def on_timeout(self, conn: Connection, process: Mapping[Any, Any]) -> None:
        self.manager.on_timeout(conn, process)  # the same table: the transfer's own timeout

    def _end(self, conn: Connection, process: Mapping[Any, Any], reason: str) -> None:
        self.manager.end_in(conn, process, reason)
        with self._ended_lock:
            self._ended.append(process["id"])

    def after_commit(self, committed: bool) -> None:
        with self._ended_lock:
            ended, self._ended = self._ended, []
        if committed:
            for tid in ended:
                self.manager.sent(tid, Command.TERMINATE)

    # ------------------------------------------------------------------ callbacks from the data plane
    def callback(self, tid: str, event: str, body: Any) -> dict[str, Any]:
        """``completed`` / ``errored`` / ``started`` / ``prepared`` for transfer ``tid``."""
        if not isinstance(body, dict):
            raise ValidationError("expected a JSON object")
        mid = body.get("messageId") or body.get("@id")
        if not isinstance(mid, str) or not mid:
            raise ValidationError("a callback needs a message id", errors=["messageId: required"])
        ended = False
        with write_tx(self.manager.engine) as conn:
            found = conn.execute(sa.select(transfers.c.role).where(transfers.c.id == tid)).first()
            if found is None:
                raise NotFoundError(f"no transfer {tid!r}")
            row = lock_process(conn, transfers, tid)
            seen = record_received(conn, _CALLBACK_KIND, tid, mid, body_digest(body))
            if seen == "conflict":
                raise ConflictError("message id already used for another callback")
            state = TState(row["state"])
            if seen == "new" and event == "completed" and found.role == "consumer":
                # a push received (kept for the view, even when the provider's completion came first);
                # the provider's TransferCompletionMessage completes the transfer, as DSP has it
                size = body.get("bytesReceived")
                if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
                    conn.execute(transfers.update().where(transfers.c.id == tid).values(received_bytes=size))
            elif seen == "new" and state not in TERMINAL:
                if event == "completed":
                    if state != TState.STARTED:  # rolled back: the data plane sends it again later
                        raise ConflictError(f"transfer {tid} is {state.name}: it cannot complete now")
                    self.manager.command_in(conn, tid, Command.COMPLETE)
                elif event == "errored":
                    reason = body.get("reason") or "no reason given"
                    self.manager.end_in(conn, row, f"the data plane ended the transfer: {reason}")
                    ended = True
            row = lock_process(conn, transfers, tid)
        if ended:
            self.manager.sent(tid, Command.TERMINATE)
        else:
            self.manager.worker.wake()
        return {"processId": tid, "state": TState(row["state"]).name}


def dataflow_callback_router(signals: DataPlaneSignals, secret: bytes) -> APIRouter:
    """``POST /transfers/{id}/dataflow/{event}`` (mount under e.g. ``/api/signaling``)."""
    import asyncio

    from connector.dataplane._signal_auth import DATA_PLANE, verify_signal

    router = APIRouter(tags=["data plane signaling"])

    @router.post("/transfers/{tid}/dataflow/{event}")
    async def callback(tid: str, event: str, request: Request) -> JSONResponse:
        raw = await request.body()
        try:
            verify_signal(secret, request.headers.get("authorization"), issuer=DATA_PLANE,
                          audience=request.url.path, body=raw)  # fmt: skip
            if event not in ("prepared", "started", "completed", "errored"):
                raise NotFoundError(f"no data flow event {event!r}")
            try:
                body = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                raise ValidationError("body is not JSON") from None
            return JSONResponse(await asyncio.to_thread(signals.callback, tid, event, body))
        except DadamError as exc:
            status = exc.status_hint if exc.status_hint < 500 else 500
            return JSONResponse({"error": exc.code, "message": exc.message}, status_code=status)

    return router
