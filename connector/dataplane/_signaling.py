"""The data plane's signaling API (modelled on Eclipse Dataplane Signaling v1; decision record 0452).

The control plane drives data flows over HTTP (every call authenticated, see :mod:`._signal_auth`):

* ``POST <base>/v1/dataflows/start``: create a provider flow (flow id = the control plane's transfer
  process id). The ``start`` answer of a pull flow carries the DataAddress (EDR: this data plane's
  endpoint and access token) that the control plane puts into the DSP TransferStartMessage; a push
  flow queues the push (:class:`SignaledPushService`).
* ``POST <base>/v1/dataflows/prepare``: create a consumer flow (flow id = the consumer's transfer
  process id), before the TransferRequestMessage goes out. An ``HttpData-PUSH`` flow without a
  destination of its own gets this data plane's push inbox and a fresh bearer secret; the answer's
  ``dataAddress`` is what the consumer's TransferRequestMessage carries. ``started`` / ``resume``
  bring the provider's EDR of a pull (kept with the flow). What the inbox receives ends the flow
  COMPLETED and is reported with a ``completed`` callback (``bytesReceived``).
* ``POST <base>/v1/dataflows/{flowId}/suspend|resume|terminate|started|completed`` and
  ``GET <base>/v1/dataflows/{flowId}/status``.

Every signal carries a message id (``@id`` or ``messageId``); the flow keeps the ids it applied, so
a resent signal (its answer was lost) changes nothing and answers the flow as it is. A signal that
finds the flow already where it leads is answered the same way (idempotent). An unknown flow
answers 404, a transition the flow cannot make 409 with the reason (a COMPLETED flow answers late
suspend / resume / terminate signals as it is: its data was delivered).

Back to the control plane (``<callbackAddress>/transfers/{processId}/dataflow/completed|errored``)
the data plane reports a push's outcome, a pull flow ended by its usage policy, or (consumer side)
a push received. The callback is
written to the flow row in the same transaction as the outcome and resent with backoff until the
control plane acknowledges it (never lost; the control plane deduplicates by message id).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Connection, Engine

from connector.dataplane._edr import EdrService
from connector.dataplane._flows import flows
from connector.dataplane._push import PushService
from connector.dataplane._signal_auth import CONTROL_PLANE, DATA_PLANE, SignalAuth, verify_signal
from connector.errors import ConflictError, DadamError, NotFoundError, ValidationError
from connector.store import read_only, write_tx
from contracts._process import PollingThread
from contracts._transfer import PULL_FORMATS, PUSH_FORMATS, TransferManager, address_properties
from contracts._transfer_states import Command, TState

__all__ = ["DataFlows", "SignaledPushService", "signaling_router"]

log = logging.getLogger("dadam.signaling")

#: message ids kept per flow (a flow sees a handful of signals in its life)
_KEEP_IDS = 64
#: signal -> (states it applies from, state it leads to)
_MOVES: dict[str, tuple[frozenset[str], str]] = {
    "suspend": (frozenset({"STARTED"}), "SUSPENDED"),
    "resume": (frozenset({"SUSPENDED"}), "STARTED"),
    "started": (frozenset({"PREPARED"}), "STARTED"),
    "completed": (frozenset({"STARTED", "SUSPENDED", "PREPARED"}), "COMPLETED"),
    "terminate": (frozenset({"PREPARED", "STARTED", "SUSPENDED"}), "TERMINATED"),
}
_FINAL = frozenset({"COMPLETED", "TERMINATED"})
CONSUMER = "consumer"
#: consumer push flows accept pushes in these states: before ``started`` arrives (the provider may
#: push as soon as the consumer acknowledged its TransferStartMessage) and after the inbox completed
#: the flow (a provider that did not record its push's outcome pushes again)
_INBOX_OPEN = frozenset({"PREPARED", "STARTED", "COMPLETED"})


#: a flow's state as the transfer state the push worker reads
_FLOW_TSTATE = {"PREPARED": TState.REQUESTED, "STARTED": TState.STARTED, "SUSPENDED": TState.SUSPENDED,
                "COMPLETED": TState.COMPLETED, "TERMINATED": TState.TERMINATED}  # fmt: skip


class DataFlows:
    """The data plane's flows: signal handling, push outcomes and callbacks to the control plane.

    It also stands in for the transfer manager of a :class:`PushService` (``command_in`` / ``sent``):
    a push of a signaled flow reports its outcome here instead of changing the transfer itself."""

    def __init__(
        self,
        engine: Engine,
        edr: EdrService,
        secret: bytes,
        *,
        manager: TransferManager | None = None,
        http: httpx.Client | None = None,
        retry_base_s: float = 0.5,
        max_delay_s: float = 60.0,
        lease_s: float = 30.0,
        poll_s: float = 0.5,
    ) -> None:
        self.engine = engine
        self.edr = edr
        #: database mode fallback: pushes of transfers that are not signaled flows (decision 0451)
        self.manager = manager
        self.pushes: PushService | None = None
        self.http = http or httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0))
        self.auth = SignalAuth(secret, DATA_PLANE)
        self.retry_base_s = retry_base_s
        self.max_delay_s = max_delay_s
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.owner = uuid.uuid4().hex[:16]
        self._poller = PollingThread(self.send_callbacks, "dadam-dataflow-callbacks", poll_s)
        #: PushService sets this (the database mode's STARTED hook); flows queue pushes themselves
        self.on_started: Callable[..., Any] | None = None

    # ------------------------------------------------------------------ views
    @staticmethod
    def view(row: Any, address: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "@type": "DataFlow",
            "flowId": row["flow_id"],
            "processId": row["process_id"],
            "agreementId": row["agreement_id"],
            "datasetId": row["dataset_id"],
            "transferType": row["transfer_type"],
            "state": row["state"],
            "reason": row["reason"],
        }
        if row["side"] == CONSUMER:
            out["side"] = CONSUMER
            if row["received_bytes"] is not None:
                out["bytesReceived"] = row["received_bytes"]
        if address is not None:
            out["dataAddress"] = address
        return out

    def _answer(self, row: Any) -> dict[str, Any]:
        """A flow's answer; a STARTED provider pull flow's answer carries a fresh EDR (the same
        transfer and consumer: a resent start or resume gets a usable address, never a second flow);
        a consumer flow's carries its address (push: the destination, pull: the provider's EDR)."""
        address = None
        if row["side"] == CONSUMER:
            address = orjson.loads(row["destination"]) if row["destination"] else None
        elif row["state"] == "STARTED" and row["transfer_type"] in PULL_FORMATS:
            address = self.edr.data_address(row["flow_id"], row["participant_id"] or "")
        return self.view(row, address)

    def status(self, flow_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(flows).where(flows.c.flow_id == flow_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"no data flow {flow_id!r}")
        return self._answer(row) if row["side"] == CONSUMER else self.view(row)

    # ------------------------------------------------------------------ signals
    @staticmethod
    def _message_id(body: dict[str, Any]) -> str:
        mid = body.get("messageId") or body.get("@id")
        if not isinstance(mid, str) or not mid:
            raise ValidationError("a signal needs a message id", errors=["messageId: required"])
        return mid[:200]

    def _lock(self, conn: Connection, flow_id: str) -> Any:
        stmt = sa.select(flows).where(flows.c.flow_id == flow_id)
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        return conn.execute(stmt).mappings().first()

    def open(self, body: Any, *, start: bool) -> dict[str, Any]:
        """``start`` (start=True: a provider flow) or ``prepare`` (a consumer flow): create the flow,
        or answer it if it exists."""
        if not isinstance(body, dict):
            raise ValidationError("expected a JSON object")
        problems = [f"{k}: required" for k in ("flowId", "processId", "agreementId", "transferType",
                                                 "callbackAddress") if not body.get(k)]  # fmt: skip
        ttype = str(body.get("transferType") or "")
        if ttype and ttype not in PULL_FORMATS | PUSH_FORMATS:
            problems.append(f"transferType: one of {sorted(PULL_FORMATS | PUSH_FORMATS)}")
        given = body.get("dataAddress")
        if start and ttype in PUSH_FORMATS and not isinstance(given, dict):
            problems.append("dataAddress: the destination of a push")
        if not start and ttype == "AmazonS3-PUSH" and not isinstance(given, dict):
            problems.append("dataAddress: the bucket to receive the push in")
        if problems:
            raise ValidationError("invalid data flow message", errors=problems)
        mid = self._message_id(body)
        flow_id = str(body["flowId"])
        now = time.time()
        with write_tx(self.engine) as conn:
            row = self._lock(conn, flow_id)
            if row is None:
                if start:
                    destination = given if ttype in PUSH_FORMATS else None
                else:
                    destination = self._provision(flow_id, ttype, given)
                conn.execute(
                    flows.insert().values(
                        flow_id=flow_id, process_id=str(body["processId"]), agreement_id=str(body["agreementId"]),
                        dataset_id=body.get("datasetId"), transfer_type=ttype,
                        participant_id=body.get("participantId"), state="STARTED" if start else "PREPARED",
                        destination=orjson.dumps(destination).decode() if destination else None,
                        callback_address=str(body["callbackAddress"]).rstrip("/"),
                        message_ids=orjson.dumps([mid]).decode(), reason=None, callback_attempts=0,
                        created_at=now, updated_at=now, side=None if start else CONSUMER,
                    )
                )  # fmt: skip
                if start:
                    self._queue_push(conn, flow_id, ttype)
            elif mid not in orjson.loads(row["message_ids"]):
                if row["process_id"] != str(body["processId"]):
                    raise ConflictError(f"data flow {flow_id!r} belongs to another transfer process")
                if (row["side"] == CONSUMER) == start:
                    side = "consumer (prepared)" if row["side"] == CONSUMER else "provider (started)"
                    raise ConflictError(
                        f"data flow {flow_id!r} is a {side} flow: it cannot be {'started' if start else 'prepared'}"
                    )
                if start and row["state"] != "STARTED":
                    raise ConflictError(f"data flow {flow_id!r} is {row['state']}: it cannot start")
                self._remember(conn, row, mid)
            row = self._lock(conn, flow_id)
        self._wake_pushes()
        return self._answer(row)

    def _provision(self, flow_id: str, ttype: str, given: Any) -> dict[str, Any] | None:
        """A consumer flow's destination: the one the consumer chose, or (``HttpData-PUSH``) this
        data plane's push inbox with a fresh bearer secret that only this flow's pushes carry."""
        if isinstance(given, dict) and given:
            return given
        if ttype != "HttpData-PUSH":
            return None

        def prop(name: str, value: str) -> dict[str, str]:
            return {"@type": "EndpointProperty", "name": name, "value": value}

        return {
            "@type": "DataAddress",
            "endpointType": "https://w3id.org/idsa/v4.1/HTTP",
            "endpoint": f"{self.edr.public_base_url}/api/public/inbox/{quote(flow_id, safe=':')}",
            "endpointProperties": [
                prop("authorization", secrets.token_urlsafe(32)),
                prop("authType", "bearer"),
            ],
        }

    def signal(self, flow_id: str, name: str, body: Any) -> dict[str, Any]:
        """suspend | resume | terminate | started | completed for an existing flow."""
        if not isinstance(body, dict):
            raise ValidationError("expected a JSON object")
        mid = self._message_id(body)
        allowed, target = _MOVES[name]
        with write_tx(self.engine) as conn:
            row = self._lock(conn, flow_id)
            if row is None:
                raise NotFoundError(f"no data flow {flow_id!r}")
            if mid in orjson.loads(row["message_ids"]):
                pass  # applied before (a resend): change nothing, even if a later signal moved the flow
            elif row["state"] == target or row["state"] == "COMPLETED":
                # already there (idempotent); or the flow's data was all delivered: a late signal
                # has nothing left to act on (the completed callback still goes)
                self._remember(conn, row, mid)
                self._learn_source(conn, row, name, body)
            elif row["state"] not in allowed:
                raise ConflictError(f"data flow {flow_id!r} is {row['state']}: cannot {name} it")
            else:
                reason = body.get("reason")
                self._move(conn, row, target, mid, reason=str(reason) if reason else None)
                self._learn_source(conn, row, name, body)
                if name == "resume" and row["side"] != CONSUMER:
                    self._queue_push(conn, flow_id, row["transfer_type"])
            row = self._lock(conn, flow_id)
        self._wake_pushes()
        return self._answer(row)

    @staticmethod
    def _learn_source(conn: Connection, row: Any, name: str, body: dict[str, Any]) -> None:
        """A consumer pull flow's ``started`` / ``resume`` carries the provider's EDR: keep it."""
        address = body.get("dataAddress")
        if (
            row["side"] == CONSUMER
            and name in ("started", "resume")
            and row["transfer_type"] in PULL_FORMATS
            and isinstance(address, dict)
        ):
            conn.execute(
                flows.update()
                .where(flows.c.flow_id == row["flow_id"])
                .values(destination=orjson.dumps(address).decode(), updated_at=time.time())
            )

    def _move(self, conn: Connection, row: Any, state: str, mid: str, *, reason: str | None = None) -> None:
        values: dict[str, Any] = {"state": state, "updated_at": time.time()}
        if reason is not None:
            values["reason"] = reason
        conn.execute(flows.update().where(flows.c.flow_id == row["flow_id"]).values(**values))
        self._remember(conn, row, mid)

    @staticmethod
    def _remember(conn: Connection, row: Any, mid: str) -> None:
        kept = [i for i in orjson.loads(row["message_ids"]) if i != mid][-(_KEEP_IDS - 1) :]
        ids = [*kept, mid]
        conn.execute(
            flows.update()
            .where(flows.c.flow_id == row["flow_id"])
            .values(message_ids=orjson.dumps(ids).decode())
        )

    def _queue_push(self, conn: Connection, flow_id: str, ttype: str) -> None:
        if ttype in PUSH_FORMATS and self.pushes is not None:
            self.pushes.queue(conn, {"id": flow_id, "format": ttype})

    def _wake_pushes(self) -> None:
        if self.pushes is not None:
            self.pushes.wake()

    # ------------------------------------------------------------------ outcomes (PushService, pulls)
    def is_flow(self, conn: Connection, tid: str) -> bool:
        return conn.execute(sa.select(flows.c.flow_id).where(flows.c.flow_id == tid)).first() is not None

    def command_in(self, conn: Connection, tid: str, cmd: Command, reason: str | None = None) -> None:
        """A push finished (COMPLETE) or failed for good (TERMINATE), in the push's transaction: the
        flow ends and its callback is queued; a transfer that is no flow goes to the manager."""
        row = self._lock(conn, tid)
        if row is None:
            if self.manager is None:
                raise NotFoundError(f"no data flow {tid!r}")
            self.manager.command_in(conn, tid, cmd, reason)
            return
        if row["state"] in _FINAL:
            return
        ok = cmd == Command.COMPLETE
        now = time.time()
        conn.execute(
            flows.update()
            .where(flows.c.flow_id == tid)
            .values(
                state="COMPLETED" if ok else "TERMINATED", reason=reason, updated_at=now,
                callback_event="completed" if ok else "errored", callback_id=f"urn:uuid:{uuid.uuid4()}",
                callback_reason=reason, callback_attempts=0, callback_next_at=now, callback_lease_until=None,
            )
        )  # fmt: skip

    def sent(self, tid: str, cmd: Command) -> None:
        with self.engine.connect() as conn:
            flow = self.is_flow(conn, tid)
        if flow:
            self._poller.wake()
        elif self.manager is not None:
            self.manager.sent(tid, cmd)

    def errored(self, tid: str, reason: str) -> bool:
        """End a signaled flow with ``reason`` (e.g. its usage policy can never permit again) and
        tell the control plane; False when ``tid`` is not a signaled flow."""
        with write_tx(self.engine) as conn:
            if not self.is_flow(conn, tid):
                return False
            self.command_in(conn, tid, Command.TERMINATE, reason)
        self._poller.wake()
        return True

    def flow_tstate(self, tid: str) -> TState | None:
        """A flow's state as a transfer state (for the push worker); None when not a flow."""
        with self.engine.connect() as conn:
            state = conn.execute(sa.select(flows.c.state).where(flows.c.flow_id == tid)).scalar()
        if state is None:
            return None
        return _FLOW_TSTATE[str(state)]

    # ------------------------------------------------------------------ consumer push inbox
    def inbox_check(self, flow_id: str, authorization: str | None) -> tuple[bool, str | None]:
        """(whether ``flow_id`` is a consumer flow, why a push to it is refused or None)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(flows).where(flows.c.flow_id == flow_id)).mappings().first()
        if row is None or row["side"] != CONSUMER:
            return False, None
        if row["transfer_type"] != "HttpData-PUSH" or not row["destination"]:
            return True, "no push transfer here"
        expected = address_properties(orjson.loads(row["destination"])).get("authorization", "")
        given = (authorization or "").removeprefix("Bearer ").removeprefix("bearer ").strip()
        if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
            return True, "bad or missing bearer secret"
        if row["state"] not in _INBOX_OPEN:
            return True, f"transfer is {row['state']}"
        return True, None

    def received(self, flow_id: str, size: int) -> None:
        """The push inbox stored a push of ``size`` bytes for consumer flow ``flow_id``: the flow
        is COMPLETED and the control plane is told (``completed`` with ``bytesReceived``). A push
        received again (the provider repeated it) updates the size and tells nothing new."""
        with write_tx(self.engine) as conn:
            row = self._lock(conn, flow_id)
            if row is None or row["side"] != CONSUMER:
                return
            now = time.time()
            values: dict[str, Any] = {"received_bytes": size, "updated_at": now}
            if row["state"] not in _FINAL:
                values.update(
                    state="COMPLETED", callback_event="completed", callback_id=f"urn:uuid:{uuid.uuid4()}",
                    callback_reason=None, callback_attempts=0, callback_next_at=now, callback_lease_until=None,
                )  # fmt: skip
            conn.execute(flows.update().where(flows.c.flow_id == flow_id).values(**values))
        self._poller.wake()

    # ------------------------------------------------------------------ callbacks
    def send_callbacks(self) -> int:
        """Send due callbacks (claimed with a lease); how many were attempted."""
        now = time.time()
        with read_only(self.engine) as conn:
            due = (
                conn.execute(
                    sa.select(flows.c.flow_id)
                    .where(
                        flows.c.callback_event.is_not(None),
                        flows.c.callback_next_at <= now,
                        sa.or_(flows.c.callback_lease_until.is_(None), flows.c.callback_lease_until < now),
                    )
                    .order_by(flows.c.callback_next_at)
                    .limit(8)
                )
                .scalars()
                .all()
            )
        done = 0
        for fid in due:
            with write_tx(self.engine) as conn:  # a conditional update: one replica wins
                won = conn.execute(
                    flows.update()
                    .where(
                        flows.c.flow_id == fid,
                        flows.c.callback_event.is_not(None),
                        sa.or_(flows.c.callback_lease_until.is_(None), flows.c.callback_lease_until < now),
                    )
                    .values(callback_lease_until=now + self.lease_s)
                ).rowcount
                row = conn.execute(sa.select(flows).where(flows.c.flow_id == fid)).mappings().first()
            if won == 1 and row is not None:
                self._callback(row)
                done += 1
        return done

    def _callback(self, row: Any) -> None:
        event = row["callback_event"]
        url = f"{row['callback_address']}/transfers/{quote(row['process_id'], safe=':')}/dataflow/{event}"
        body: dict[str, Any] = {
            "messageId": row["callback_id"],
            "flowId": row["flow_id"],
            "processId": row["process_id"],
        }
        if row["callback_reason"]:
            body["reason"] = row["callback_reason"]
        if event == "completed" and row["received_bytes"] is not None:
            body["bytesReceived"] = row["received_bytes"]
        problem: str | None = None
        try:
            resp = self.http.post(url, content=orjson.dumps(body), auth=self.auth,
                                  headers={"content-type": "application/json"})  # fmt: skip
            if resp.status_code == 404:
                log.error(
                    "control plane does not know transfer %s: callback %s dropped", row["process_id"], event
                )
            elif resp.status_code >= 300:
                problem = f"control plane answered {resp.status_code}: {resp.text[:300]}"
        except httpx.HTTPError as exc:
            problem = f"cannot reach the control plane at {url}: {exc.__class__.__name__}"
        with write_tx(self.engine) as conn:
            if problem is None:
                conn.execute(
                    flows.update()
                    .where(flows.c.flow_id == row["flow_id"], flows.c.callback_id == row["callback_id"])
                    .values(
                        callback_event=None,
                        callback_next_at=None,
                        callback_lease_until=None,
                        updated_at=time.time(),
                    )
                )
                return
            attempts = int(row["callback_attempts"]) + 1
            delay = min(self.max_delay_s, self.retry_base_s * 2 ** (attempts - 1))
            conn.execute(
                flows.update()
                .where(flows.c.flow_id == row["flow_id"], flows.c.callback_id == row["callback_id"])
                .values(
                    callback_attempts=attempts,
                    callback_next_at=time.time() + delay,
                    callback_lease_until=None,
                    updated_at=time.time(),
                )
            )
        log.warning("callback %s of flow %s failed (attempt %d, again in %.1f s): %s",
                    event, row["flow_id"], attempts, delay, problem)  # fmt: skip

    def start(self) -> None:
        self._poller.start()

    def stop(self) -> None:
        self._poller.stop()
        self.http.close()


class SignaledPushService(PushService):
    """The push worker of a data plane driven by signaling: a signaled flow's outcome goes to its
    :class:`DataFlows` (callback to the control plane), not into the transfer row."""

    def __init__(self, *args: Any, flows_: DataFlows, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flows = flows_
        flows_.pushes = self

    def _transfer_state(self, tid: str) -> TState | None:
        state = self.flows.flow_tstate(tid)
        return state if state is not None else super()._transfer_state(tid)

    def _locked_state(self, conn: Connection, tid: str) -> TState | None:
        state = conn.execute(
            sa.select(flows.c.state).where(flows.c.flow_id == tid).with_for_update()
        ).scalar()
        if state is None:
            return super()._locked_state(conn, tid)
        return _FLOW_TSTATE[str(state)]

    def _finish_failed(self, tid: str, reason: str, *, terminate: bool) -> None:
        if self.flows.flow_tstate(tid) is None:
            super()._finish_failed(tid, reason, terminate=terminate)
            return
        with write_tx(self.engine) as conn:
            self._mark_failed(conn, tid, reason)
            if terminate:
                self.flows.command_in(conn, tid, Command.TERMINATE, reason)
        self.flows.sent(tid, Command.TERMINATE)
        log.warning("push of %s failed: %s", tid, reason)


def signaling_router(flows_: DataFlows, secret: bytes) -> APIRouter:
    """The data plane's signaling endpoints (mount under e.g. ``/api/signaling``)."""
    import asyncio

    router = APIRouter(tags=["data plane signaling"])

    def _error(exc: DadamError) -> JSONResponse:
        status = exc.status_hint if exc.status_hint < 500 else 500
        body: dict[str, Any] = {"error": exc.code, "message": exc.message}
        errors = getattr(exc, "errors", None)
        if errors:
            body["details"] = list(errors)
        return JSONResponse(body, status_code=status)

    async def call(request: Request, work: Callable[[Any], dict[str, Any]]) -> JSONResponse:
        raw = await request.body()
        try:
            verify_signal(secret, request.headers.get("authorization"), issuer=CONTROL_PLANE,
                          audience=request.url.path, body=raw)  # fmt: skip
            try:
                body = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                raise ValidationError("body is not JSON") from None
            return JSONResponse(await asyncio.to_thread(work, body))
        except DadamError as exc:
            return _error(exc)

    @router.post("/v1/dataflows/prepare")
    async def prepare(request: Request) -> JSONResponse:
        return await call(request, lambda body: flows_.open(body, start=False))

    @router.post("/v1/dataflows/start")
    async def start(request: Request) -> JSONResponse:
        return await call(request, lambda body: flows_.open(body, start=True))

    def _signal_route(name: str) -> None:
        async def handler(flow_id: str, request: Request) -> JSONResponse:
            return await call(request, lambda body: flows_.signal(flow_id, name, body))

        router.add_api_route(
            f"/v1/dataflows/{{flow_id}}/{name}", handler, methods=["POST"], name=f"dataflow_{name}"
        )

    for name in _MOVES:
        _signal_route(name)

    @router.get("/v1/dataflows/{flow_id}/status")
    async def status(flow_id: str, request: Request) -> JSONResponse:
        return await call(request, lambda _body: flows_.status(flow_id))

    return router
