"""The provider's public data endpoint: ``GET /api/public/transfers/{transfer id}``.

Every request is enforced: a valid access token for this transfer, the transfer STARTED on the
provider side, the agreement's usage policy still permitting (evaluated by the usage_policy
engine with the use so far), then the data streams from its source (a local file, with HTTP
Range support, or an HTTP backend) in chunks, never held in memory. When the response has been
sent, one usage event (bytes, records, calls) is recorded with a fresh id; a request that fails
or is cut off before its end is recorded with outcome ``partial`` or not at all (source down:
502, nothing metered).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.engine import Engine

from catalog import CatalogStore
from connector.dataplane._edr import EdrService
from connector.errors import DadamError, NotFoundError, PermissionDeniedError, TokenError
from contracts._tables import negotiations
from contracts._transfer import retirements, transfers
from contracts._transfer_states import TState
from metering import UsageEvent, record_usage_events
from metering._tables import usage_events

__all__ = ["RecordCounter", "public_router"]

CHUNK = 64 * 1024
CATEGORIES = {"carbon", "process", "supply-chain"}


class RecordCounter:
    """Counts records while bytes stream by: JSON array elements, NDJSON lines or CSV rows."""

    def __init__(self, media_type: str) -> None:
        mt = media_type.lower()
        self.kind = (
            "csv"
            if "csv" in mt
            else "ndjson"
            if ("ndjson" in mt or "jsonl" in mt)
            else "json"
            if "json" in mt
            else "none"
        )
        self.records = 0
        self._depth = 0
        self._in_str = False
        self._esc = False
        self._seen_value = False
        self._newlines = 0
        self._last = b""

    def feed(self, chunk: bytes) -> None:
        if self.kind in ("csv", "ndjson"):
            self._newlines += chunk.count(b"\n")
            self._last = chunk[-1:] or self._last
            return
        if self.kind != "json":
            return
        for b in chunk:
            if self._in_str:
                if self._esc:
                    self._esc = False
                elif b == 0x5C:
                    self._esc = True
                elif b == 0x22:
                    self._in_str = False
                continue
            if b == 0x22:
                self._in_str = True
                if self._depth == 1:
                    self._seen_value = True
            elif b in (0x5B, 0x7B):  # [ {
                if self._depth == 1:
                    self._seen_value = True
                self._depth += 1
            elif b in (0x5D, 0x7D):  # ] }
                self._depth -= 1
                if self._depth == 0 and self._seen_value:
                    self.records += 1  # the last element of the top-level array
            elif b == 0x2C and self._depth == 1:  # , between top-level elements
                self.records += 1
                self._seen_value = False
            elif self._depth == 1 and b not in (0x20, 0x0A, 0x0D, 0x09):
                self._seen_value = True

    def total(self) -> int:
        if self.kind == "ndjson":
            return self._newlines + (1 if self._last and self._last != b"\n" else 0)
        if self.kind == "csv":
            rows = self._newlines + (1 if self._last and self._last != b"\n" else 0)
            return max(rows - 1, 0)  # minus the header
        return self.records


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single ``bytes=`` range; None for the whole object."""
    if not header:
        return None
    if not header.startswith("bytes=") or "," in header:
        raise DadamError("only a single 'bytes=start-end' range is supported")
    first, _, last = header[6:].partition("-")
    if first == "":
        n = int(last)
        return max(size - n, 0), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or start > end:
        err = DadamError(f"range {header} is outside the object of {size} bytes")
        err.status_hint = 416
        err.code = "range_not_satisfiable"
        raise err
    return start, min(end, size - 1)


def public_router(
    engine: Engine,
    store: CatalogStore,
    edr: EdrService,
    *,
    claims_for: Callable[[str], dict[str, Any]] = lambda did: {},
    account_open: Callable[[str], bool] = lambda did: False,
    http: httpx.AsyncClient | None = None,
) -> APIRouter:
    """The public data endpoint (unauthenticated by DCP: the EDR token is the credential)."""
    router = APIRouter(tags=["data plane"])
    client = http or httpx.AsyncClient(timeout=30.0)

    def _error(status: int, code: str, message: str, details: list[str] | None = None) -> JSONResponse:
        return JSONResponse({"error": code, "message": message, "details": details or []}, status_code=status)

    def _authorize(tid: str, authorization: str | None) -> tuple[dict[str, Any], dict[str, Any], Any]:
        claims = edr.verify(authorization, tid)
        with engine.connect() as conn:
            row = conn.execute(sa.select(transfers).where(transfers.c.id == tid)).mappings().first()
            if row is None or row["role"] != "provider":
                raise NotFoundError(f"no transfer {tid!r}")
            if row["counterparty_id"] and claims.get("sub") != row["counterparty_id"]:
                raise TokenError("access token was issued to another consumer")
            agreement = conn.execute(
                sa.select(negotiations.c.agreement, negotiations.c.updated_at).where(
                    negotiations.c.role == "provider", negotiations.c.agreement_id == row["agreement_id"]
                )
            ).first()
            retired = conn.execute(
                sa.select(retirements.c.reason).where(retirements.c.agreement_id == row["agreement_id"])
            ).first()
            stats = conn.execute(
                sa.select(sa.func.count(), sa.func.min(usage_events.c.started_at), sa.func.coalesce(sa.func.sum(usage_events.c.bytes), 0))
                .where(usage_events.c.agreement_id == row["agreement_id"], usage_events.c.outcome == "ok")
            ).one()  # fmt: skip
        if agreement is None or not agreement.agreement:
            raise PermissionDeniedError(f"agreement {row['agreement_id']} is not known")
        if retired is not None:  # named first: it is why the transfer was terminated
            raise PermissionDeniedError(f"agreement {row['agreement_id']} was retired: {retired.reason}")
        if TState(row["state"]) != TState.STARTED:
            raise PermissionDeniedError(f"transfer {tid} is {TState(row['state']).name}, not STARTED")
        consumer = row["counterparty_id"] or ""
        decision = _evaluate(
            orjson.loads(agreement.agreement), row, claims_for(consumer), stats, agreement.updated_at,
            account_open(consumer),
        )  # fmt: skip
        if not decision.permitted:
            raise PermissionDeniedError(
                "the agreement's usage policy does not permit this use: "
                + "; ".join(decision.failures() or decision.reasons())
            )
        dataset = store.get_dataset(row["dataset_id"])
        return dict(row), claims, dataset

    @router.get("/api/public/transfers/{tid}")
    async def pull(tid: str, request: Request) -> Response:
        try:
            row, _claims, dataset = await asyncio.to_thread(
                _authorize, tid, request.headers.get("authorization")
            )
        except DadamError as exc:
            return _error(exc.status_hint if exc.status_hint != 401 else 401, exc.code, exc.message)
        address = dataset.data_address
        if address is None:
            return _error(502, "no_source", f"dataset {dataset.id} has no data address")
        media_type = dataset.media_type or "application/octet-stream"
        counter = RecordCounter(media_type)
        started = time.time()
        # A client-chosen request id makes a retried request count once, and lets the consumer
        # meter the same ids on its side (usage receipts compare them).
        request_id = request.headers.get("x-request-id") or str(uuid.uuid4())
        event_id = f"{tid}:{request_id[:200]}"
        sent = 0

        async def finish(outcome: str) -> None:
            category = str(getattr(dataset.category, "value", dataset.category))
            event = UsageEvent(
                id=event_id, agreement_id=row["agreement_id"], transfer_id=tid, dataset_id=dataset.id,
                category=category if category in CATEGORIES else "other", bytes=sent, records=counter.total(),
                calls=1, started_at=started, ended_at=time.time(), outcome=outcome,
                consumer=row["counterparty_id"] or "", provider=edr.identity.did,
            )  # fmt: skip

            def write() -> None:
                with engine.begin() as conn:
                    record_usage_events(conn, [event])

            await asyncio.to_thread(write)

        headers: dict[str, str] = {"Cache-Control": "no-store"}
        status = 200
        if address.type == "file":
            path = Path(address.properties["path"])
            try:
                size = path.stat().st_size
                span = _range(request.headers.get("range"), size)
            except OSError as exc:
                return _error(502, "source_unavailable", f"the data source cannot be read: {exc.strerror}")
            except DadamError as exc:
                return _error(exc.status_hint if exc.status_hint != 500 else 400, exc.code, exc.message)
            start, end = span or (0, size - 1)
            if span is not None:
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            headers["Content-Length"] = str(max(end - start + 1, 0))
            headers["Accept-Ranges"] = "bytes"

            async def body() -> AsyncIterator[bytes]:
                nonlocal sent
                outcome = "partial"
                recorded = False
                try:
                    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
                    try:
                        pos = start
                        held: bytes | None = None
                        while pos <= end:
                            chunk = await asyncio.to_thread(os.pread, fd, min(CHUNK, end - pos + 1), pos)
                            if not chunk:
                                break
                            pos += len(chunk)
                            sent += len(chunk)
                            counter.feed(chunk)
                            if held is not None:
                                yield held
                            held = chunk
                        # The event commits before the last chunk leaves: an answered request is
                        # never unmetered, even if the process dies right after sending it.
                        await finish("ok")
                        recorded = True
                        if held is not None:
                            yield held
                    finally:
                        os.close(fd)
                finally:
                    if not recorded:
                        await finish(outcome)

            return StreamingResponse(body(), status_code=status, headers=headers, media_type=media_type)
        if address.type == "http":
            url = address.properties["url"]
            try:
                upstream = await client.send(client.build_request("GET", url), stream=True)
            except httpx.HTTPError as exc:
                return _error(502, "source_unavailable", f"the data source is down: {exc.__class__.__name__}")
            if upstream.status_code >= 400:
                await upstream.aclose()
                return _error(502, "source_error", f"the data source answered {upstream.status_code}")

            async def relay() -> AsyncIterator[bytes]:
                nonlocal sent
                outcome = "partial"
                recorded = False
                try:
                    held: bytes | None = None
                    async for chunk in upstream.aiter_bytes(CHUNK):
                        sent += len(chunk)
                        counter.feed(chunk)
                        if held is not None:
                            yield held
                        held = chunk
                    await finish("ok")  # before the last chunk: see the file source
                    recorded = True
                    if held is not None:
                        yield held
                finally:
                    await upstream.aclose()
                    if not recorded:
                        await finish(outcome)

            return StreamingResponse(relay(), media_type=upstream.headers.get("content-type", media_type))
        return _error(
            501, "unsupported_source", f"{address.type} sources are not served by this data plane yet"
        )

    return router


def _evaluate(
    agreement: dict[str, Any], row: Any, claims: dict[str, Any], stats: Any, agreed_at: float, paying: bool
) -> Any:
    import usage_policy as up

    policy = up.parse_policy(_rules(agreement))
    count, first, _bytes = stats
    ctx = up.EvaluationContext(
        did=row["counterparty_id"],
        bpn=claims.get("bpn"),
        memberships=frozenset(claims.get("memberships") or ()),
        framework_agreements=frozenset(claims.get("framework_agreements") or ()),
        credentials=frozenset(claims.get("credentials") or ()),
        claims=claims,
        region=claims.get("region"),
        purpose=claims.get("purpose"),
        target=row["dataset_id"],
        usage=up.UsageState(
            count=int(count),
            first_use=datetime.fromtimestamp(first, UTC) if first else None,
            agreed_at=datetime.fromtimestamp(agreed_at, UTC),
            bytes=int(_bytes),
        ),
        # a compensate duty is billed in arrears by the data bank when the consumer has an account
        payment=up.PaymentState(account_open=paying),
    )
    return up.evaluate(policy, up.Scope.USAGE, ctx)


def _rules(agreement: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"@type": "Set"}
    for key in ("permission", "prohibition", "obligation"):
        if key in agreement:
            out[key] = agreement[key]
    return out
