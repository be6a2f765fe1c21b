"""Push transfers: the provider streams a dataset to the consumer's HTTP endpoint
(``HttpData-PUSH``) or S3 bucket (``AmazonS3-PUSH``, multipart), and the consumer's inbox that
receives HTTP pushes when it has no endpoint of its own.

A push is a durable row (``dp_pushes``) queued in the same transaction that makes the provider's
transfer STARTED. Any replica's push worker claims a due row with a lease (renewed while the push
streams, so a dead worker's push is picked up again), checks the agreement exactly as a pull request
is checked, streams source to destination chunk by chunk, and then, in one transaction, records the
usage event (stable id ``<transfer>:push``: a repeated push is metered once), marks the push done
and completes the transfer. Failures retry with exponential backoff; a refusal by the destination
(4xx), an exhausted retry budget or a policy that can never permit again terminate the transfer
with the reason.

A running push re-reads its transfer's state every ``check_s`` seconds (the worker poll interval):
once the transfer is no longer STARTED (suspended, terminated, completed by the other side) the
push stops between two chunks, closing the HTTP request or aborting the S3 multipart upload, so
nothing half-written stays at the destination. A suspended push is paused and pushed again from the
start on resume; an interrupted attempt records no usage event, like a failed one.
"""

from __future__ import annotations

import hmac
import io
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Connection, Engine

from catalog import CatalogStore
from connector.dataplane._public import PolicyDenied, RecordCounter, enforce, usage_event
from connector.dataplane._sources import S3Config, SourceUnavailable, open_source
from connector.errors import DadamError, NotFoundError
from connector.store import metadata, read_only, write_tx
from contracts._process import PollingThread
from contracts._transfer import (
    PUSH_FORMATS,
    TransferManager,
    address_properties,
    transfers,
)
from contracts._transfer_states import Command, TState
from metering import record_usage_events

__all__ = ["PushService", "consumer_destination", "inbox_router", "pushes"]

log = logging.getLogger("dadam.push")

pushes = sa.Table(
    "dp_pushes",
    metadata,
    sa.Column("transfer_id", sa.String(200), primary_key=True),
    #: pending (due at next_at), paused (transfer suspended), done, failed, cancelled
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_at", sa.Float, nullable=False),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_until", sa.Float, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("records", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_dp_pushes_status_next_at", "status", "next_at"),
)


class PushFailed(Exception):
    """One push attempt failed; ``permanent`` when retrying cannot help (the destination refused)."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class PushInterrupted(Exception):
    """The transfer left STARTED while its push streamed (``state``: what it is now, None if gone)."""

    def __init__(self, state: TState | None) -> None:
        super().__init__(f"the transfer is {state.name if state is not None else 'gone'}")
        self.state = state


class _Reader(io.RawIOBase):
    """A file-like view of a chunk iterator (what ``minio.put_object`` reads parts from)."""

    def __init__(self, chunks: Iterator[bytes], on_chunk: Callable[[bytes], None]) -> None:
        self._chunks = chunks
        self._buf = b""
        self._on_chunk = on_chunk

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        want = size if size is not None and size >= 0 else None
        parts = [self._buf]
        have = len(self._buf)
        while want is None or have < want:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._on_chunk(chunk)
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        if want is None:
            self._buf = b""
            return data
        self._buf = data[want:]
        return data[:want]


class PushService:
    """Queues, claims and runs pushes (provider side). Start it with :meth:`start` on every replica."""

    def __init__(
        self,
        engine: Engine,
        store: CatalogStore,
        transfers_manager: TransferManager,
        *,
        provider_did: str,
        s3: S3Config | None = None,
        claims_for: Callable[[str], dict[str, Any]] = lambda did: {},
        account_open: Callable[[str], bool] = lambda did: False,
        retry_limit: int = 7,
        retry_base_s: float = 0.5,
        max_delay_s: float = 60.0,
        part_size: int = 16 * 1024 * 1024,
        lease_s: float = 30.0,
        poll_s: float = 0.5,
        http: httpx.Client | None = None,
        check_s: float | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.transfers = transfers_manager
        self.provider_did = provider_did
        self.s3 = s3
        self.claims_for = claims_for
        self.account_open = account_open
        self.retry_limit = retry_limit
        self.retry_base_s = retry_base_s
        self.max_delay_s = max_delay_s
        self.part_size = part_size
        self.lease_s = lease_s
        self.poll_s = poll_s
        #: how often a running push checks that its transfer is still STARTED
        self.check_s = poll_s if check_s is None else check_s
        self.http = http or httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0))
        self.owner = uuid.uuid4().hex[:16]
        self._poller = PollingThread(self.run_once, "dadam-push", poll_s)
        transfers_manager.on_started = self.queue

    # ------------------------------------------------------------------ queueing
    def queue(self, conn: Connection, row: Mapping[Any, Any]) -> None:
        """TransferManager.on_started: a provider push transfer became STARTED (start or resume)."""
        if row["format"] not in PUSH_FORMATS:
            return
        now = time.time()
        found = conn.execute(sa.select(pushes.c.status).where(pushes.c.transfer_id == row["id"])).first()
        if found is None:
            conn.execute(
                pushes.insert().values(
                    transfer_id=row["id"], status="pending", attempts=0, next_at=now, bytes=0, records=0,
                    created_at=now, updated_at=now,
                )
            )  # fmt: skip
        elif found.status in ("paused", "pending"):  # resumed: push again from the start
            conn.execute(
                pushes.update()
                .where(
                    pushes.c.transfer_id == row["id"],
                    # an attempt still streaming keeps its lease: it either never saw the
                    # suspension and goes on, or it stops and re-queues itself (_interrupted)
                    sa.or_(pushes.c.lease_until.is_(None), pushes.c.lease_until < now),
                )
                .values(status="pending", next_at=now, lease_owner=None, lease_until=None, updated_at=now)
            )
        self._poller.wake()

    def wake(self) -> None:
        """Look for due pushes now."""
        self._poller.wake()

    def status(self, transfer_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(sa.select(pushes).where(pushes.c.transfer_id == transfer_id)).mappings().first()
            )
        return dict(row) if row else None

    # ------------------------------------------------------------------ worker
    def _claim(self) -> list[str]:
        now = time.time()
        with read_only(self.engine) as conn:
            due = (
                conn.execute(
                    sa.select(pushes.c.transfer_id)
                    .where(
                        pushes.c.status == "pending",
                        pushes.c.next_at <= now,
                        sa.or_(pushes.c.lease_until.is_(None), pushes.c.lease_until < now),
                    )
                    .order_by(pushes.c.next_at)
                    .limit(4)
                )
                .scalars()
                .all()
            )
        claimed = []
        for tid in due:
            with write_tx(self.engine) as conn:  # a conditional update: only one replica wins
                won = conn.execute(
                    pushes.update()
                    .where(
                        pushes.c.transfer_id == tid,
                        pushes.c.status == "pending",
                        sa.or_(pushes.c.lease_until.is_(None), pushes.c.lease_until < now),
                    )
                    .values(lease_owner=self.owner, lease_until=now + self.lease_s, updated_at=now)
                ).rowcount
            if won == 1:
                claimed.append(tid)
        return claimed

    def _renew(self, tid: str) -> None:
        now = time.time()
        with write_tx(self.engine) as conn:
            conn.execute(
                pushes.update()
                .where(pushes.c.transfer_id == tid, pushes.c.lease_owner == self.owner)
                .values(lease_until=now + self.lease_s, updated_at=now)
            )

    def run_once(self) -> int:
        """Claim due pushes and run them; how many were run."""
        claimed = self._claim()
        for tid in claimed:
            try:
                self.run(tid)
            except Exception:  # never kill the worker; the lease expires and the push is retried
                log.exception("push of transfer %s failed unexpectedly", tid)
        return len(claimed)

    def start(self) -> None:
        self._poller.start()

    def stop(self) -> None:
        self._poller.stop()

    # ------------------------------------------------------------------ one push
    def run(self, tid: str) -> None:
        """One attempt at the claimed push of transfer ``tid``."""
        try:
            row, dataset = enforce(
                self.engine, self.store, tid, subject=None,
                claims_for=self.claims_for, account_open=self.account_open,
            )  # fmt: skip
        except PolicyDenied as exc:
            self._finish_failed(tid, exc.message, terminate=True)
            return
        except (DadamError, NotFoundError) as exc:
            self._interrupted(tid, exc.message)
            return
        destination: dict[str, Any] = orjson.loads(row["data_address"] or "{}")
        counter = RecordCounter(dataset.media_type or "application/octet-stream")
        sent = 0
        started = time.time()
        last_renew = last_check = time.monotonic()

        def on_chunk(chunk: bytes) -> None:
            nonlocal sent, last_renew, last_check
            sent += len(chunk)
            counter.feed(chunk)
            now = time.monotonic()
            if now - last_check >= self.check_s:
                last_check = now
                state = self._transfer_state(tid)
                if state != TState.STARTED:
                    raise PushInterrupted(state)
            if now - last_renew > self.lease_s / 3:
                self._renew(tid)
                last_renew = now

        try:
            opened = open_source(dataset.data_address, s3=self.s3)
        except SourceUnavailable as exc:
            self._retry_or_fail(tid, f"the data source is unavailable: {exc}")
            return
        try:
            if row["format"] == "HttpData-PUSH":
                self._http_push(destination, opened.chunks, on_chunk, dataset, tid,
                                opened.media_type or dataset.media_type)  # fmt: skip
            else:
                self._s3_push(destination, opened.chunks, on_chunk, dataset,
                              opened.media_type or dataset.media_type)  # fmt: skip
        except PushFailed as exc:
            if exc.permanent:
                self._finish_failed(tid, exc.reason, terminate=True)
            else:
                self._retry_or_fail(tid, exc.reason)
            return
        except SourceUnavailable as exc:
            self._retry_or_fail(tid, f"the data source failed during the push: {exc}")
            return
        except PushInterrupted as exc:
            log.info("push of %s stopped after %d bytes: %s", tid, sent, exc)
            self._interrupted(tid, str(exc), requeue=True)
            return
        finally:
            if opened.close is not None:
                opened.close()
        event = usage_event(
            f"{tid}:push", row, dataset, sent, counter.total(), started, "ok", self.provider_did
        )
        with write_tx(self.engine) as conn:
            record_usage_events(conn, [event])
            conn.execute(
                pushes.update()
                .where(pushes.c.transfer_id == tid)
                .values(
                    status="done",
                    bytes=sent,
                    records=counter.total(),
                    lease_owner=None,
                    lease_until=None,
                    last_error=None,
                    updated_at=time.time(),
                )
            )
            self.transfers.command_in(conn, tid, Command.COMPLETE)
        self.transfers.sent(tid, Command.COMPLETE)
        log.info("pushed transfer %s: %d bytes, %d records", tid, sent, counter.total())

    def _http_push(
        self,
        destination: dict[str, Any],
        chunks: Iterator[bytes],
        on_chunk: Callable[[bytes], None],
        dataset: Any,
        tid: str,
        media_type: str | None,
    ) -> None:
        props = address_properties(destination)
        url = str(destination.get("endpoint"))
        headers = {
            "Content-Type": media_type or "application/octet-stream",
            "X-Dadam-Transfer": tid,
            "X-Dadam-Dataset": dataset.id,
        }
        if props.get("authorization"):
            kind = props.get("authType", "bearer").lower()
            value = props["authorization"]
            headers[props.get("authKey", "Authorization")] = (
                f"Bearer {value}" if kind == "bearer" and not value.lower().startswith("bearer ") else value
            )
        method = (props.get("method") or "POST").upper()

        def body() -> Iterator[bytes]:
            for chunk in chunks:
                on_chunk(chunk)
                yield chunk

        try:
            response = self.http.request(method, url, content=body(), headers=headers)
        except PushInterrupted:
            raise
        except httpx.HTTPError as exc:
            raise PushFailed(f"push to {url} failed: {exc.__class__.__name__}: {exc}") from None
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise PushFailed(f"push to {url} failed: the destination answered {response.status_code}")
        if response.status_code >= 400:
            raise PushFailed(
                f"push to {url} refused: the destination answered {response.status_code} {response.text[:200]}",
                permanent=True,
            )

    def _s3_push(
        self,
        destination: dict[str, Any],
        chunks: Iterator[bytes],
        on_chunk: Callable[[bytes], None],
        dataset: Any,
        media_type: str | None,
    ) -> None:
        props = address_properties(destination)
        config = S3Config(
            str(destination.get("endpoint")),
            props.get("accessKeyId", ""),
            props.get("secretAccessKey", ""),
            props.get("region") or "us-east-1",
        )
        bucket = props["bucketName"]
        key = props.get("objectName") or props.get("keyName") or _object_name(dataset)
        try:
            client = config.client()
            client.put_object(
                bucket,
                key,
                _Reader(chunks, on_chunk),
                length=-1,  # unknown: minio streams it as a multipart upload of part_size parts
                part_size=self.part_size,
                content_type=media_type or "application/octet-stream",
            )
        except (SourceUnavailable, PushInterrupted):  # minio aborted the multipart upload first
            raise
        except Exception as exc:
            code = getattr(exc, "code", None)
            if code in ("AccessDenied", "NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise PushFailed(f"push to s3://{bucket}/{key} refused: {code}", permanent=True) from None
            reason = f"{code}" if code else f"{exc.__class__.__name__}: {exc}"
            raise PushFailed(f"push to s3://{bucket}/{key} failed: {reason}") from None

    # ------------------------------------------------------------------ outcomes
    def _transfer_state(self, tid: str) -> TState | None:
        with self.engine.connect() as conn:
            state = conn.execute(sa.select(transfers.c.state).where(transfers.c.id == tid)).scalar()
        return None if state is None else TState(state)

    def _locked_state(self, conn: Connection, tid: str) -> TState | None:
        """The transfer's state, its row locked until ``conn`` commits (PostgreSQL; SQLite's write
        transaction is exclusive anyway), so a resume cannot slip between the read and the update."""
        state = conn.execute(
            sa.select(transfers.c.state).where(transfers.c.id == tid).with_for_update()
        ).scalar()
        return None if state is None else TState(state)

    def _interrupted(self, tid: str, reason: str, *, requeue: bool = False) -> None:
        """The push of ``tid`` cannot run now: paused while its transfer is suspended, else
        cancelled; with ``requeue`` (it stopped mid-stream), queued again when the transfer runs
        again already (a resume came in between)."""
        now = time.time()
        with write_tx(self.engine) as conn:
            state = self._locked_state(conn, tid)
            if state in (TState.SUSPENDING, TState.SUSPENDED):
                values: dict[str, Any] = {"status": "paused"}
            elif requeue and state in (TState.STARTED, TState.STARTING, TState.RESUMING):
                values = {"status": "pending", "next_at": now}
            else:  # ended, or e.g. retired meanwhile: the retirement terminates the transfer itself
                values = {"status": "cancelled", "last_error": reason}
            conn.execute(
                pushes.update()
                .where(pushes.c.transfer_id == tid)
                .values(lease_owner=None, lease_until=None, updated_at=now, **values)
            )

    def _retry_or_fail(self, tid: str, reason: str) -> None:
        with write_tx(self.engine) as conn:
            attempts = (
                int(
                    conn.execute(sa.select(pushes.c.attempts).where(pushes.c.transfer_id == tid)).scalar()
                    or 0
                )
                + 1
            )
            if attempts < max(self.retry_limit, 1):
                delay = min(self.max_delay_s, self.retry_base_s * 2 ** (attempts - 1))
                conn.execute(
                    pushes.update()
                    .where(pushes.c.transfer_id == tid)
                    .values(
                        attempts=attempts,
                        next_at=time.time() + delay,
                        last_error=reason,
                        lease_owner=None,
                        lease_until=None,
                        updated_at=time.time(),
                    )
                )
                log.warning(
                    "push of %s failed (attempt %d, retry in %.1f s): %s", tid, attempts, delay, reason
                )
                return
        self._finish_failed(tid, f"{reason} (gave up after {attempts} attempts)", terminate=True)

    @staticmethod
    def _mark_failed(conn: Connection, tid: str, reason: str) -> None:
        """The push row of ``tid`` failed for good with ``reason`` (lease released)."""
        conn.execute(
            pushes.update()
            .where(pushes.c.transfer_id == tid)
            .values(
                status="failed", last_error=reason, lease_owner=None, lease_until=None, updated_at=time.time()
            )
        )

    def _finish_failed(self, tid: str, reason: str, *, terminate: bool) -> None:
        with write_tx(self.engine) as conn:
            self._mark_failed(conn, tid, reason)
            state = conn.execute(sa.select(transfers.c.state).where(transfers.c.id == tid)).scalar()
            live = state is not None and TState(state) in (TState.STARTED, TState.SUSPENDED)
            if terminate and live:
                self.transfers.command_in(conn, tid, Command.TERMINATE, reason)
        if terminate and live:
            self.transfers.sent(tid, Command.TERMINATE)
        log.warning("push of %s failed: %s", tid, reason)


def _object_name(dataset: Any) -> str:
    address = dataset.data_address
    props = dict(address.properties) if address is not None else {}
    for key in ("key", "path", "url"):
        if props.get(key):
            name = str(props[key]).rstrip("/").rsplit("/", 1)[-1]
            if name:
                return name
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset.id)[:200]


# ---------------------------------------------------------------------- consumer side
def consumer_destination(
    fmt: str,
    requested: dict[str, Any] | None,
    *,
    public_url: str,
    s3: S3Config | None,
) -> Callable[[str], dict[str, Any]] | None:
    """The DataAddress the consumer asks the provider to push to, built when the pid is known.

    ``HttpData-PUSH`` without a destination: this connector's inbox (a fresh bearer secret per
    transfer). With ``{"endpoint", "authorization"?, "method"?}``: that endpoint. ``AmazonS3-PUSH``:
    ``{"bucketName", "objectName"?}`` in this connector's S3 (``DADAM_S3_*``), or a full S3 address
    with ``endpoint``, ``accessKeyId``, ``secretAccessKey``. A ready DSP DataAddress is used as is.
    """
    if fmt not in PUSH_FORMATS:
        return None
    req = dict(requested or {})
    if req.get("@type") == "DataAddress" or "endpointProperties" in req:
        return lambda pid: req

    def prop(name: str, value: Any) -> dict[str, Any]:
        return {"@type": "EndpointProperty", "name": name, "value": str(value)}

    if fmt == "HttpData-PUSH":

        def http_destination(pid: str) -> dict[str, Any]:
            endpoint = req.get("endpoint") or f"{public_url.rstrip('/')}/api/public/inbox/{pid}"
            token = req.get("authorization") or ("" if req.get("endpoint") else secrets.token_urlsafe(32))
            props = [prop("authType", req.get("authType", "bearer"))]
            if token:
                props.insert(0, prop("authorization", token))
            if req.get("method"):
                props.append(prop("method", req["method"]))
            return {"@type": "DataAddress", "endpointType": "https://w3id.org/idsa/v4.1/HTTP",
                    "endpoint": endpoint, "endpointProperties": props}  # fmt: skip

        return http_destination

    def s3_destination(pid: str) -> dict[str, Any]:
        endpoint = req.get("endpoint") or (s3.endpoint if s3 else None)
        access = req.get("accessKeyId") or (s3.access_key if s3 else None)
        secret = req.get("secretAccessKey") or (s3.secret_key if s3 else None)
        if not endpoint or not access or not secret:
            from connector.errors import ValidationError

            raise ValidationError(
                "AmazonS3-PUSH needs an S3 destination",
                errors=["dataDestination: endpoint, accessKeyId, secretAccessKey (or configure DADAM_S3_*)"],
            )
        if not req.get("bucketName"):
            from connector.errors import ValidationError

            raise ValidationError(
                "AmazonS3-PUSH needs a bucket", errors=["dataDestination.bucketName: required"]
            )
        props = [prop("bucketName", req["bucketName"]), prop("region", req.get("region") or (s3.region if s3 else "us-east-1")),
                 prop("accessKeyId", access), prop("secretAccessKey", secret)]  # fmt: skip
        if req.get("objectName"):
            props.insert(1, prop("objectName", req["objectName"]))
        return {"@type": "DataAddress", "endpointType": "AmazonS3", "endpoint": endpoint,
                "endpointProperties": props}  # fmt: skip

    return s3_destination


def inbox_router(engine: Engine, inbox_dir: Path, *, flows: Any = None) -> APIRouter:
    """``POST|PUT /api/public/inbox/{consumer pid}``: where providers push to this connector.

    The bearer secret is the one this connector put in its TransferRequestMessage; the body is
    streamed to ``inbox_dir/<transfer>/<dataset>`` (written to a temporary name, renamed when complete).
    ``flows`` (a signaled data plane's ``DataFlows``): a consumer flow's push is checked against the
    flow (its secret and state), not the transfer row, and its reception is reported to the flow.
    """
    router = APIRouter(tags=["data plane"])

    def _error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": code, "message": message, "details": []}, status_code=status)

    def _check(pid: str, authorization: str | None) -> str | None:
        if flows is not None:
            is_flow, problem = flows.inbox_check(pid, authorization)
            if is_flow:
                return problem  # type: ignore[no-any-return]
        with engine.connect() as conn:
            row = conn.execute(sa.select(transfers).where(transfers.c.id == pid)).mappings().first()
        if row is None or row["role"] != "consumer" or row["format"] != "HttpData-PUSH":
            return "no push transfer here"
        expected = address_properties(orjson.loads(row["data_address"] or "{}")).get("authorization", "")
        given = (authorization or "").removeprefix("Bearer ").removeprefix("bearer ").strip()
        if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
            return "bad or missing bearer secret"
        if TState(row["state"]) not in (TState.STARTED, TState.REQUESTED):
            return f"transfer is {TState(row['state']).name}"
        return None

    async def receive(pid: str, request: Request) -> JSONResponse:
        import asyncio

        problem = await asyncio.to_thread(_check, pid, request.headers.get("authorization"))
        if problem is not None:
            status = 404 if problem.startswith("no push") else 403 if "secret" in problem else 409
            return _error(status, "push_refused", problem)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in pid)
        name = (
            "".join(
                c if c.isalnum() or c in "-_." else "_"
                for c in request.headers.get("x-dadam-dataset", "data")
            )[:200]
            or "data"
        )
        folder = inbox_dir / safe
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        part = folder / f".{name}.part"
        received = 0
        f = await asyncio.to_thread(open, part, "wb")
        try:
            async for chunk in request.stream():
                received += len(chunk)
                await asyncio.to_thread(f.write, chunk)
        except Exception:
            await asyncio.to_thread(f.close)
            await asyncio.to_thread(part.unlink, True)
            raise
        await asyncio.to_thread(f.close)
        await asyncio.to_thread(part.replace, folder / name)
        if flows is not None:
            await asyncio.to_thread(flows.received, pid, received)
        return JSONResponse({"received": received, "file": f"{safe}/{name}"}, status_code=201)

    router.add_api_route("/api/public/inbox/{pid}", receive, methods=["POST", "PUT"])
    return router
