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
import dataclasses
import functools
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.engine import Connection, Engine

from catalog import CatalogStore
from catalog import _tables as catalog_tables
from connector.dataplane._edr import EdrService
from connector.dataplane._flows import flow_state
from connector.dataplane._records import RecordCounter
from connector.dataplane._sources import (
    FileReader,
    S3Config,
    SourceUnavailable,
    http_url,
    open_file_reader,
    s3_first,
    s3_read,
    s3_size,
    stream_get,
)
from connector.dataplane._splice import (
    MAX_RELAYS,
    RelayError,
    client_connection,
    open_upstream,
    relay,
    splice_supported,
)
from connector.dataplane._splice import pool as splice_pool
from connector.errors import DadamError, NotFoundError, PermissionDeniedError, TokenError
from connector.store import read_only
from contracts._tables import negotiations
from contracts._transfer import retirements, transfers
from contracts._transfer_states import TState
from metering import UsageEvent, record_usage_events, usage_so_far
from metering._usage import CATEGORIES

__all__ = ["PolicyDenied", "RecordCounter", "public_router", "usage_event"]

log = logging.getLogger("dadam.dataplane")

CHUNK = 64 * 1024
#: an S3 range up to this size is read whole in the request's one thread hop and metered there
SMALL_BODY = 256 * 1024


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


def _category(dataset: Any) -> str:
    """The usage category of a dataset (what its usage events are filed under)."""
    category = str(getattr(dataset.category, "value", dataset.category))
    return category if category in CATEGORIES else "other"


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
    return UsageEvent(
        id=event_id, agreement_id=row["agreement_id"], transfer_id=row["id"], dataset_id=dataset.id,
        category=_category(dataset), bytes=sent, records=records,
        calls=1, started_at=started, ended_at=time.time(), outcome=outcome,
        consumer=row["counterparty_id"] or "", provider=provider,
    )  # fmt: skip


async def _file_chunks(reader: FileReader, first: bytes) -> AsyncIterator[bytes]:
    """A file's chunks: ``first`` (already read), then the rest, each read in a worker thread while
    the previous one is being sent (one read ahead); the file is closed at the end or when the
    request ends early (after a read still running)."""
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[bytes] | None = None
    try:
        chunk = first
        while chunk:
            pending = loop.run_in_executor(None, reader.read)
            yield chunk
            chunk = await pending
            pending = None
    finally:
        if pending is None:
            reader.close()
        elif not pending.done():
            pending.add_done_callback(lambda _f: reader.close())
        else:  # cancelled: the read may still be running in its thread; close() waits for it there
            loop.run_in_executor(None, reader.close)


def _walk_constraints(node: Any) -> Iterator[Any]:
    """Every atomic constraint anywhere in a parsed policy (rules, duties, refinements)."""

    import usage_policy as up

    if isinstance(node, up.Constraint):
        yield node
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            yield from _walk_constraints(getattr(node, f.name))
    elif isinstance(node, (tuple, list)):
        for item in node:
            yield from _walk_constraints(item)


@functools.lru_cache(maxsize=256)
def _compiled(agreement_text: str) -> tuple[Any, bool, bool]:
    """An agreement's parsed usage policy (cached by the agreement's exact text: never stale), whether
    it needs the use so far (a constraint reading ``usage.*`` beyond the agreement date, or one we do
    not know), and whether it has a compensate duty (the consumer's prepaid account matters)."""
    import usage_policy as up
    from usage_policy._operands import lookup

    policy = up.parse_policy(_rules(orjson.loads(agreement_text)))
    needs_usage = False
    for c in _walk_constraints(policy):
        known = lookup(c.left.iri)
        if known is None or (known.input.startswith("usage.") and known.input != "usage.agreed_at"):
            needs_usage = True
            break
    return policy, needs_usage, "compensate" in agreement_text


@functools.lru_cache(maxsize=256)
def _dataset_from_row(body: str, data_address: str) -> Any:
    """A stored dataset parsed once per exact stored text (an edited dataset is a new key)."""
    return CatalogStore._load_dataset(body, data_address)


@dataclasses.dataclass(frozen=True, slots=True)
class _Prepared:
    """A checked request whose body is streamed after the thread hop: from a file (``reader``,
    its ``first`` chunk read already), from S3 (presigned ``url``, bytes ``start``-``end``), or
    from another source (``kind="other"``: opened on the event loop)."""

    kind: Literal["file", "s3", "other"]
    row: dict[str, Any]
    dataset: Any
    status: int = 200
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    media_type: str = "application/octet-stream"
    started: float = 0.0
    reader: FileReader | None = None
    first: bytes = b""
    url: str = ""
    start: int = 0
    end: int = 0


def _facts(conn: Connection, store: CatalogStore, tid: str, subject: str | None) -> dict[str, Any]:
    """What enforcement reads, in one connection: transfer row, agreement, retirement, the data
    flow's state, the use so far (only when the policy reads it) and the dataset."""
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
    compiled = _compiled(agreement.agreement) if agreement is not None and agreement.agreement else None
    stats: Any = (0, None, 0)
    if compiled is not None and compiled[1]:  # the use so far: one row of running totals
        stats = usage_so_far(conn, row["agreement_id"])
    flow = flow_state(conn, tid)  # signaling mode (decision 0452): the data flow's state decides
    dataset: Any = None
    if getattr(store, "engine", None) is conn.engine:
        stored = conn.execute(
            sa.select(catalog_tables.datasets.c.body, catalog_tables.datasets.c.data_address).where(
                catalog_tables.datasets.c.id == row["dataset_id"]
            )
        ).first()
        if stored is not None:
            dataset = _dataset_from_row(stored.body, stored.data_address)
    return {"row": row, "agreement": agreement, "compiled": compiled, "retired": retired, "stats": stats,
            "flow": flow, "dataset": dataset}  # fmt: skip


def _decide(
    facts: dict[str, Any],
    store: CatalogStore,
    tid: str,
    claims_for: Callable[[str], dict[str, Any]],
    account_open: Callable[[str], bool],
) -> tuple[dict[str, Any], Any]:
    row, agreement, retired, flow = facts["row"], facts["agreement"], facts["retired"], facts["flow"]
    if facts["compiled"] is None:
        raise PermissionDeniedError(f"agreement {row['agreement_id']} is not known")
    if retired is not None:  # named first: it is why the transfer was terminated
        raise PermissionDeniedError(f"agreement {row['agreement_id']} was retired: {retired.reason}")
    # STARTING / RESUMING: our TransferStartMessage (with this EDR) is out and the consumer may use
    # it before its acknowledgement reaches us; anything else is not started
    # signaling mode (0452): the flow must be STARTED too; the transfer row is read as well, so a
    # suspension or termination the control plane committed is refused at once, before its signal
    # reaches the data plane (the signal can wait in the outbox while the data plane is down)
    if flow is not None and flow != "STARTED":
        raise PermissionDeniedError(f"data flow {tid} is {flow}, not STARTED")
    if TState(row["state"]) not in (TState.STARTED, TState.STARTING, TState.RESUMING):
        raise PermissionDeniedError(f"transfer {tid} is {TState(row['state']).name}, not STARTED")
    consumer = row["counterparty_id"] or ""
    policy, _needs_usage, compensates = facts["compiled"]
    decision = _evaluate(
        policy, row, claims_for(consumer), facts["stats"], agreement.updated_at,
        account_open(consumer) if compensates else False,
    )  # fmt: skip
    if not decision.permitted:
        failures = decision.failures() or decision.reasons()
        raise PolicyDenied(
            "the agreement's usage policy does not permit this use: " + "; ".join(failures),
            failures,
            permanent=_permanent(decision),
        )
    dataset = facts["dataset"] if facts["dataset"] is not None else store.get_dataset(row["dataset_id"])
    return dict(row), dataset


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
    the dataset; PermissionDeniedError / PolicyDenied / NotFoundError naming the failed check.
    Nothing is cached but what is keyed by exact stored content (parsed policy, parsed dataset):
    state, retirement and use so far are read on every call."""
    with read_only(engine) as conn:
        facts = _facts(conn, store, tid, subject)
    return _decide(facts, store, tid, claims_for, account_open)


class _SplicedResponse(Response):
    """A response written by ``run(scope, receive, send)`` (the splice relay) instead of a body."""

    def __init__(self, run: Callable[[Any, Any, Any], Awaitable[None]]) -> None:
        self.run = run
        self.background = None
        self.status_code = 200
        self.raw_headers = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.run(scope, receive, send)


class _Relays:
    """How many splice relays run (each holds a thread of :data:`_splice.pool`)."""

    def __init__(self) -> None:
        self.running = 0

    def free(self) -> bool:
        return self.running < MAX_RELAYS


async def _spliced(
    prepared: _Prepared,
    counter: RecordCounter,
    connection: tuple[Any, Any, int],
    event_id: str,
    finish: Callable[[str, int], Awaitable[None]],
    relays: _Relays,
    scope: Any,
    receive: Any,
    send: Any,
) -> None:
    """Serves an S3 range with the splice relay (see :mod:`connector.dataplane._splice`)."""
    cycle, transport, fd = connection
    loop = asyncio.get_running_loop()
    length = prepared.end - prepared.start + 1
    try:
        try:
            up = await loop.run_in_executor(
                splice_pool,
                open_upstream,
                prepared.url,
                {"Range": f"bytes={prepared.start}-{prepared.end}"},
                30.0,
            )
        except (OSError, TimeoutError) as exc:
            reason = str(exc) if isinstance(exc, ConnectionError) and exc.args else exc.__class__.__name__
            await _json_error(502, "source_unavailable", f"S3 is unreachable: {reason}")(scope, receive, send)
            return
        if up.status not in (200, 206) or up.length != length:
            up.close()
            message = (
                f"S3 answered {up.status}"
                if up.status not in (200, 206)
                else f"S3 answered {up.length} bytes for a range of {length}"
            )
            await _json_error(502, "source_unavailable", message)(scope, receive, send)
            return
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in prepared.headers.items()]
        content_type = prepared.media_type
        if content_type.startswith("text/") and "charset=" not in content_type.lower():
            content_type += "; charset=utf-8"  # as the streamed path (Starlette) labels text
        headers.append((b"content-type", content_type.encode("latin-1")))
        await send({"type": "http.response.start", "status": prepared.status, "headers": headers})
        waited = 0
        while transport.get_write_buffer_size() and waited < 30_000:  # the head leaves before the body
            await asyncio.sleep(0.001)
            waited += 1
        feed = counter.feed if counter.kind != "none" else None
        try:
            if transport.get_write_buffer_size() or transport.is_closing():
                up.close()
                raise RelayError("client", "the client took nothing for 30 s", 0)
            # the relay thread writes to its own duplicate of the client's socket and closes it, and
            # the S3 connection, itself when it ends: were this task cancelled and the server to
            # close its descriptor meanwhile, that number could name another file by then
            own = os.dup(fd)
            sent, last = await loop.run_in_executor(splice_pool, _relay_and_close, up, own, feed)
        except RelayError as exc:
            await finish("partial", exc.sent)
            # a client going away is routine; a source failing midway is the operator's business
            log.log(logging.WARNING if exc.side == "source" else logging.INFO,
                    "pull %s cut off after %d of %d bytes: %s", event_id, exc.sent, length, exc.message)  # fmt: skip
            transport.close()
            for _ in range(100):  # the server sees the connection lost: no "incomplete response" error
                if getattr(cycle, "disconnected", True):
                    break
                await asyncio.sleep(0.001)
            return
        await finish("ok", sent + len(last))  # metered before the last piece leaves
        cycle.expected_content_length -= sent  # the server only saw the last piece go out
        await send({"type": "http.response.body", "body": last, "more_body": False})
    finally:
        relays.running -= 1


def _relay_and_close(up: Any, client_fd: int, feed: Callable[[bytes], object] | None) -> tuple[int, bytes]:
    """:func:`relay` on a worker thread, which then closes the S3 connection and ``client_fd``."""
    try:
        return relay(up, client_fd, feed=feed)
    finally:
        os.close(client_fd)
        up.close()


def _json_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, "details": []}, status_code=status)


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
    splice: bool = True,
) -> APIRouter:
    """The public data endpoint (unauthenticated by DCP: the EDR token is the credential).

    ``splice``: relay large S3 pulls with splice(2) where the server allows it (decision 0453).

    ``terminate(transfer id, reason)`` ends a transfer whose usage policy can never be satisfied again.
    """
    router = APIRouter(tags=["data plane"])
    client_http = http or httpx.AsyncClient(timeout=30.0)
    s3_clients: list[Any] = []
    relays = _Relays()

    def s3_client() -> Any:
        assert s3 is not None
        if not s3_clients:
            s3_clients.append(s3.client())
        return s3_clients[0]

    def _error(status: int, code: str, message: str, details: list[str] | None = None) -> JSONResponse:
        return JSONResponse({"error": code, "message": message, "details": details or []}, status_code=status)

    def _authorize(tid: str, authorization: str | None) -> tuple[dict[str, Any], Any]:
        """Token (signature, expiry, transfer, generation), then every enforcement read in one
        connection, then the decision."""
        claims = edr.token_claims(authorization, tid)
        shared = edr.engine is engine
        in_use = False if shared else edr.check_generation(claims, tid)
        try:
            with read_only(engine) as conn:
                if shared:
                    in_use = edr.check_generation(claims, tid, conn)
                facts = _facts(conn, store, tid, claims.get("sub"))
        finally:
            if in_use:  # outside the read: a newer token is in use, older ones stop working
                edr.mark_in_use(claims, tid)
        return _decide(facts, store, tid, claims_for, account_open)

    def _record(event: UsageEvent) -> None:
        with engine.begin() as conn:
            record_usage_events(conn, [event])

    def _prepare(
        tid: str, authorization: str | None, range_header: str | None, event_id: str
    ) -> Response | _Prepared:
        """One thread hop for the checks and the source's opening: a whole small body is read and
        metered here too. Returns that Response (or an error), or what to stream."""
        row, dataset = _authorize(tid, authorization)
        address = dataset.data_address
        if address is None:
            return _error(502, "no_source", f"dataset {dataset.id} has no data address")
        if address.type not in ("file", "s3"):
            return _Prepared("other", row, dataset)
        props = dict(address.properties)
        started = time.time()
        media_type = dataset.media_type or "application/octet-stream"
        reader: FileReader | None = None
        whole: bytes | None = None  # an S3 object read whole by its first GET
        try:
            if address.type == "file":
                reader = open_file_reader(props["path"])
                size = reader.size
            else:
                if s3 is None:
                    return _error(
                        502, "source_unavailable", "the dataset is in S3 but no S3 endpoint is configured"
                    )
                if range_header is None:  # the common case: one GET tells the size and, if small, is the body
                    size, whole = s3_first(s3_client(), props["bucket"], props["key"], SMALL_BODY)
                else:
                    size, _ = s3_size(s3_client(), props["bucket"], props["key"])
            span = _range(range_header, size)
        except SourceUnavailable as exc:
            return _error(502, "source_unavailable", str(exc))
        except DadamError as exc:
            if reader is not None:
                reader.close()
            return _error(exc.status_hint if exc.status_hint != 500 else 400, exc.code, exc.message)
        start, end = span or (0, size - 1)
        length = max(end - start + 1, 0)
        headers = {"Cache-Control": "no-store", "Accept-Ranges": "bytes", "Content-Length": str(length),
                   "X-Dadam-Category": _category(dataset)}  # fmt: skip
        status = 200
        if span is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        try:
            body: bytes | None = None
            if reader is not None:
                reader.pos, reader.stop = start, end
                first = reader.read() if length else b""
                if reader.pos <= reader.stop:  # more to come: stream it
                    streamed, reader = reader, None
                    return _Prepared("file", row, dataset, status, headers, media_type, started,
                                     reader=streamed, first=first)  # fmt: skip
                body = first
            elif whole is not None:
                body = whole
            elif length <= SMALL_BODY:
                body = s3_read(s3_client(), props["bucket"], props["key"], start, end) if length else b""
            else:
                url = s3_client().presigned_get_object(props["bucket"], props["key"], timedelta(minutes=10))
                return _Prepared("s3", row, dataset, status, headers, media_type, started,
                                 url=url, start=start, end=end)  # fmt: skip
        except SourceUnavailable as exc:
            return _error(502, "source_unavailable", str(exc))
        except OSError as exc:
            return _error(502, "source_unavailable", f"the data source cannot be read: {exc.strerror}")
        finally:
            if reader is not None:
                reader.close()
        # the whole (small) body is here: metered before any of it leaves
        counter = RecordCounter(media_type)
        counter.feed(body)
        _record(
            usage_event(event_id, row, dataset, len(body), counter.total(), started, "ok", edr.identity.did)
        )
        return Response(body, status_code=status, headers=headers, media_type=media_type)

    async def pull(tid: str, request: Request, path: str = "") -> Response:
        # A client-chosen request id makes a retried request count once, and lets the consumer
        # meter the same ids on its side (usage receipts compare them).
        request_id = request.headers.get("x-request-id") or str(uuid.uuid4())
        event_id = f"{tid}:{request_id[:200]}"
        try:
            prepared = await asyncio.to_thread(
                _prepare, tid, request.headers.get("authorization"), request.headers.get("range"), event_id
            )
        except PolicyDenied as exc:
            if exc.permanent and terminate is not None:
                # the policy can never permit this transfer again: end it, with the reason, for both sides
                await asyncio.to_thread(_terminate_quietly, tid, exc.message)
            return _error(403, exc.code, exc.message, exc.details)
        except DadamError as exc:
            return _error(exc.status_hint, exc.code, exc.message)
        if isinstance(prepared, Response):
            return prepared
        row, dataset = prepared.row, prepared.dataset
        media_type = dataset.media_type or "application/octet-stream"
        counter = RecordCounter(media_type)
        started = prepared.started or time.time()
        sent = 0

        async def finish(outcome: str) -> None:
            event = usage_event(
                event_id, row, dataset, sent, counter.total(), started, outcome, edr.identity.did
            )
            await asyncio.to_thread(_record, event)

        async def finish_spliced(outcome: str, nbytes: int) -> None:
            nonlocal sent
            sent = nbytes
            await finish(outcome)

        async def metered(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
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
                closing = getattr(chunks, "aclose", None)
                try:
                    if closing is not None:  # the source (file, upstream connection) is released now
                        await closing()
                finally:
                    if not recorded:
                        await finish("partial")

        if prepared.kind == "file":
            assert prepared.reader is not None
            return StreamingResponse(
                metered(_file_chunks(prepared.reader, prepared.first)),
                status_code=prepared.status,
                headers=prepared.headers,
                media_type=media_type,
            )
        if prepared.kind == "s3":
            if (
                splice
                and request.method == "GET"
                and relays.free()
                and splice_supported(counter.kind != "none")
            ):
                connection = client_connection(request.scope)
                if connection is not None:
                    relays.running += 1  # taken now, given back when the relay ends
                    return _SplicedResponse(
                        functools.partial(
                            _spliced, prepared, counter, connection, event_id, finish_spliced, relays
                        )
                    )
            # the presigned ranged GET is streamed on the event loop as it arrives (no thread hop
            # per chunk, no re-chunking)
            try:
                s3_stream = await stream_get(
                    prepared.url, {"Range": f"bytes={prepared.start}-{prepared.end}"}
                )
            except (OSError, TimeoutError) as exc:
                return _error(502, "source_unavailable", f"S3 is unreachable: {exc.__class__.__name__}")
            if s3_stream.status not in (200, 206):
                s3_stream.close()
                return _error(502, "source_unavailable", f"S3 answered {s3_stream.status}")
            return StreamingResponse(
                metered(s3_stream.chunks()),
                status_code=prepared.status,
                headers=prepared.headers,
                media_type=media_type,
            )
        address = dataset.data_address
        props = dict(address.properties)
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
                metered(upstream_chunks()),
                media_type=upstream.headers.get("content-type", media_type),
                headers={"Cache-Control": "no-store", "X-Dadam-Category": _category(dataset)},
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
    policy: Any, row: Any, claims: dict[str, Any], stats: Any, agreed_at: float, paying: bool
) -> Any:
    import usage_policy as up

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
