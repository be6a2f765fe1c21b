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
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
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
from connector.dataplane._flows import flow_state
from connector.dataplane._sources import (
    S3Config,
    SourceUnavailable,
    http_url,
    open_file,
    s3_size,
)
from connector.errors import DadamError, NotFoundError, PermissionDeniedError, TokenError
from contracts._tables import negotiations
from contracts._transfer import retirements, transfers
from contracts._transfer_states import TState
from metering import UsageEvent, record_usage_events
from metering._tables import usage_events

__all__ = ["PolicyDenied", "RecordCounter", "public_router", "usage_event"]

log = logging.getLogger("dadam.dataplane")

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


class PolicyDenied(PermissionDeniedError):
    """The usage policy does not permit this use; ``permanent`` when it never will again (a count
    used up, an end date or an elapsed time passed), so the transfer is terminated."""

    def __init__(self, message: str, details: list[str], *, permanent: bool) -> None:
        super().__init__(message)
        self.details = details
        self.permanent = permanent


#: constraints that only get further from being satisfied as time passes and data is used
_MONOTONIC = {"count", "elapsedTime", "delayPeriod"}


def _permanent(decision: Any) -> bool:
    """Every failed constraint is one that can never hold again."""
    failed = [
        node
        for _, node in decision.explanation.walk()
        if node.kind == "constraint" and not node.holds and not node.children
    ]
    if not failed:
        return False
    for node in failed:
        if node.outcome != "unsatisfied":
            return False
        name = (node.left_operand or "").rsplit(":", 1)[-1]
        if name == "dateTime" and node.operator in ("lt", "lteq", "eq"):
            continue
        if name not in _MONOTONIC or node.operator not in ("lt", "lteq", "eq"):
            return False
    return True


def usage_event(
    event_id: str,
    row: Any,
    dataset: Any,
    sent: int,
    records: int,
    started: float,
    outcome: str,
    provider: str,
) -> UsageEvent:
    """The usage event of one served request or push."""
    category = str(getattr(dataset.category, "value", dataset.category))
    return UsageEvent(
        id=event_id, agreement_id=row["agreement_id"], transfer_id=row["id"], dataset_id=dataset.id,
        category=category if category in CATEGORIES else "other", bytes=sent, records=records,
        calls=1, started_at=started, ended_at=time.time(), outcome=outcome,
        consumer=row["counterparty_id"] or "", provider=provider,
    )  # fmt: skip


async def _threaded(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking chunk iterator read in a worker thread, chunk by chunk."""
    end = object()
    while True:
        chunk = await asyncio.to_thread(next, chunks, end)
        if chunk is end:
            return
        yield chunk  # type: ignore[misc]


def enforce(
    engine: Engine,
    store: CatalogStore,
    tid: str,
    *,
    subject: str | None,
    claims_for: Callable[[str], dict[str, Any]],
    account_open: Callable[[str], bool],
) -> tuple[dict[str, Any], Any]:
    """Everything a data request or a push must pass: our provider transfer, for this consumer
    (``subject``; None for a push, where we are the sender), the agreement known and not retired,
    the transfer STARTED, the usage policy permitting with the use so far. The transfer row and
    the dataset; PermissionDeniedError / PolicyDenied / NotFoundError naming the failed check."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(transfers).where(transfers.c.id == tid)).mappings().first()
        if row is None or row["role"] != "provider":
            raise NotFoundError(f"no transfer {tid!r}")
        if subject is not None and row["counterparty_id"] and subject != row["counterparty_id"]:
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
        flow = flow_state(conn, tid)  # signaling mode (decision 0452): the data flow's state decides
    if agreement is None or not agreement.agreement:
        raise PermissionDeniedError(f"agreement {row['agreement_id']} is not known")
    if retired is not None:  # named first: it is why the transfer was terminated
        raise PermissionDeniedError(f"agreement {row['agreement_id']} was retired: {retired.reason}")
    # STARTING / RESUMING: our TransferStartMessage (with this EDR) is out and the consumer may use
    # it before its acknowledgement reaches us; anything else is not started
    if flow is not None:
        if flow != "STARTED":
            raise PermissionDeniedError(f"data flow {tid} is {flow}, not STARTED")
    elif TState(row["state"]) not in (TState.STARTED, TState.STARTING, TState.RESUMING):
        raise PermissionDeniedError(f"transfer {tid} is {TState(row['state']).name}, not STARTED")
    consumer = row["counterparty_id"] or ""
    decision = _evaluate(
        orjson.loads(agreement.agreement), row, claims_for(consumer), stats, agreement.updated_at,
        account_open(consumer),
    )  # fmt: skip
    if not decision.permitted:
        failures = decision.failures() or decision.reasons()
        raise PolicyDenied(
            "the agreement's usage policy does not permit this use: " + "; ".join(failures),
            failures,
            permanent=_permanent(decision),
        )
    dataset = store.get_dataset(row["dataset_id"])
    return dict(row), dataset


def public_router(
    engine: Engine,
    store: CatalogStore,
    edr: EdrService,
    *,
    claims_for: Callable[[str], dict[str, Any]] = lambda did: {},
    account_open: Callable[[str], bool] = lambda did: False,
    http: httpx.AsyncClient | None = None,
    s3: S3Config | None = None,
    terminate: Callable[[str, str], Any] | None = None,
) -> APIRouter:
    """The public data endpoint (unauthenticated by DCP: the EDR token is the credential).

    ``terminate(transfer id, reason)`` ends a transfer whose usage policy can never be satisfied again.
    """
    router = APIRouter(tags=["data plane"])
    client_http = http or httpx.AsyncClient(timeout=30.0)
    s3_clients: list[Any] = []

    def s3_client() -> Any:
        assert s3 is not None
        if not s3_clients:
            s3_clients.append(s3.client())
        return s3_clients[0]

    def _error(status: int, code: str, message: str, details: list[str] | None = None) -> JSONResponse:
        return JSONResponse({"error": code, "message": message, "details": details or []}, status_code=status)

    def _authorize(tid: str, authorization: str | None) -> tuple[dict[str, Any], dict[str, Any], Any]:
        claims = edr.verify(authorization, tid)
        row, dataset = enforce(
            engine, store, tid, subject=claims.get("sub"), claims_for=claims_for, account_open=account_open
        )
        return row, claims, dataset

    async def pull(tid: str, request: Request, path: str = "") -> Response:
        try:
            row, _claims, dataset = await asyncio.to_thread(
                _authorize, tid, request.headers.get("authorization")
            )
        except PolicyDenied as exc:
            if exc.permanent and terminate is not None:
                # the policy can never permit this transfer again: end it, with the reason, for both sides
                await asyncio.to_thread(_terminate_quietly, tid, exc.message)
            return _error(403, exc.code, exc.message, exc.details)
        except DadamError as exc:
            return _error(exc.status_hint, exc.code, exc.message)
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
            event = usage_event(
                event_id, row, dataset, sent, counter.total(), started, outcome, edr.identity.did
            )

            def write() -> None:
                with engine.begin() as conn:
                    record_usage_events(conn, [event])

            await asyncio.to_thread(write)

        async def metered(
            chunks: AsyncIterator[bytes], close: Callable[[], Any] | None = None
        ) -> AsyncIterator[bytes]:
            """Relay chunks, counting bytes and records; the usage event commits before the last
            chunk leaves, so an answered request is never unmetered even if the process dies right
            after sending it. A request cut off midway is recorded as ``partial``."""
            nonlocal sent
            recorded = False
            try:
                held: bytes | None = None
                async for chunk in chunks:
                    sent += len(chunk)
                    counter.feed(chunk)
                    if held is not None:
                        yield held
                    held = chunk
                await finish("ok")
                recorded = True
                if held is not None:
                    yield held
            finally:
                if close is not None:
                    await asyncio.to_thread(close)
                if not recorded:
                    await finish("partial")

        headers: dict[str, str] = {"Cache-Control": "no-store"}
        status = 200
        props = dict(address.properties)
        if address.type in ("file", "s3"):
            try:
                if address.type == "file":
                    size = await asyncio.to_thread(lambda: Path(props["path"]).stat().st_size)
                else:
                    if s3 is None:
                        return _error(
                            502, "source_unavailable", "the dataset is in S3 but no S3 endpoint is configured"
                        )
                    client = s3_client()
                    size, _ = await asyncio.to_thread(s3_size, client, props["bucket"], props["key"])
                span = _range(request.headers.get("range"), size)
            except OSError as exc:
                return _error(502, "source_unavailable", f"the data source cannot be read: {exc.strerror}")
            except SourceUnavailable as exc:
                return _error(502, "source_unavailable", str(exc))
            except DadamError as exc:
                return _error(exc.status_hint if exc.status_hint != 500 else 400, exc.code, exc.message)
            start, end = span or (0, size - 1)
            if span is not None:
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            headers["Content-Length"] = str(max(end - start + 1, 0))
            headers["Accept-Ranges"] = "bytes"
            if size > 0 and address.type == "s3":
                # a presigned ranged GET streamed on the event loop: no thread hop per chunk
                url = await asyncio.to_thread(
                    client.presigned_get_object, props["bucket"], props["key"], timedelta(minutes=10)
                )
                try:
                    upstream = await client_http.send(
                        client_http.build_request("GET", url, headers={"Range": f"bytes={start}-{end}"}),
                        stream=True,
                    )
                except httpx.HTTPError as exc:
                    return _error(502, "source_unavailable", f"S3 is unreachable: {exc.__class__.__name__}")
                if upstream.status_code not in (200, 206):
                    await upstream.aclose()
                    return _error(502, "source_unavailable", f"S3 answered {upstream.status_code}")

                async def s3_chunks() -> AsyncIterator[bytes]:
                    try:
                        async for chunk in upstream.aiter_raw(1 << 20):
                            yield chunk
                    finally:
                        await upstream.aclose()

                return StreamingResponse(
                    metered(s3_chunks()), status_code=status, headers=headers, media_type=media_type
                )
            if size == 0:
                source: Iterator[bytes] = iter(())
            else:
                try:
                    source, _ = await asyncio.to_thread(open_file, props["path"], start, end)
                except SourceUnavailable as exc:
                    return _error(502, "source_unavailable", str(exc))
            return StreamingResponse(
                metered(_threaded(source), getattr(source, "close", None)),
                status_code=status, headers=headers, media_type=media_type,
            )  # fmt: skip
        if address.type == "http":
            url = http_url(props, path, request.url.query)
            try:
                upstream = await client_http.send(client_http.build_request("GET", url), stream=True)
            except httpx.HTTPError as exc:
                return _error(502, "source_unavailable", f"the data source is down: {exc.__class__.__name__}")
            if upstream.status_code >= 400:
                await upstream.aclose()
                return _error(502, "source_error", f"the data source answered {upstream.status_code}")

            async def upstream_chunks() -> AsyncIterator[bytes]:
                try:
                    async for chunk in upstream.aiter_bytes(CHUNK):
                        yield chunk
                finally:
                    await upstream.aclose()

            return StreamingResponse(
                metered(upstream_chunks()), media_type=upstream.headers.get("content-type", media_type)
            )
        return _error(501, "unsupported_source", f"{address.type} sources are not served by this data plane")

    def _terminate_quietly(tid: str, reason: str) -> None:
        assert terminate is not None
        try:
            terminate(tid, reason)
        except DadamError as exc:  # already terminating, or terminated meanwhile
            log.info("transfer %s not terminated: %s", tid, exc.message)

    router.add_api_route("/api/public/transfers/{tid}", pull, methods=["GET"])
    router.add_api_route("/api/public/transfers/{tid}/{path:path}", pull, methods=["GET"])
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


def token_router(edr: EdrService, verify_caller: Callable[[str | None], Any]) -> APIRouter:
    """``POST /api/public/token``: OAuth2 refresh (``grant_type=refresh_token``). The caller proves
    who it is with its DCP self-issued token (``verify_caller``: awaitable -> Caller), and must be
    the consumer the refresh token was issued to."""
    router = APIRouter(tags=["data plane"])

    @router.post("/api/public/token")
    async def refresh(request: Request) -> JSONResponse:
        def oauth_error(status: int, code: str, message: str) -> JSONResponse:
            return JSONResponse({"error": code, "error_description": message}, status_code=status)

        try:
            caller = await verify_caller(request.headers.get("authorization"))
        except DadamError as exc:
            return oauth_error(401, "invalid_client", exc.message)
        raw = await request.body()
        ctype = request.headers.get("content-type", "")
        try:
            if "json" in ctype:
                form = orjson.loads(raw)
            else:
                from urllib.parse import parse_qs

                form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        except (orjson.JSONDecodeError, UnicodeDecodeError):
            return oauth_error(400, "invalid_request", "body is neither a form nor JSON")
        if not isinstance(form, dict) or form.get("grant_type") != "refresh_token":
            return oauth_error(400, "unsupported_grant_type", "only grant_type=refresh_token is supported")
        if not form.get("refresh_token"):
            return oauth_error(400, "invalid_request", "refresh_token is required")
        try:
            answer = await asyncio.to_thread(edr.refresh, str(form["refresh_token"]), caller.did)
        except DadamError as exc:
            return oauth_error(400, "invalid_grant", exc.message)
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})

    return router
