"""Consumer side: ``GET <mgmt>/transfers/{id}/data[/path]`` fetches a started pull transfer's data
from the provider with its EDR and meters what arrived, so applications need neither the token
nor metering code of their own.

The connector takes the transfer's EDR (refreshed first when it expires within a minute; a
refresh that fails keeps the current token), sends ``GET <endpoint>[/path][?query]`` with the
bearer token, the caller's ``Range`` and a request id (the caller's ``X-Request-Id`` or a fresh
one, answered in ``X-Request-Id``), and streams the provider's answer back as it arrives. A
``401`` (the token expired in between) is retried once with a forced refresh. The provider's
errors come back with their status and its explanation, not metered.

When the whole body has been relayed, one usage event is recorded on this side with the id the
provider gives the same request (``<provider transfer id>:<request id>``), its bytes and records
counted while streaming: the receipt the provider later sends for it then matches our own
metering without anything posted to ``/bank/usage``. A body cut off midway is recorded as
``partial`` (not billed), a failed request not at all.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.engine import Engine

from connector.dataplane._edr import EdrRefresher
from connector.dataplane._records import RecordCounter
from connector.errors import ConflictError, NotFoundError, TransportError
from connector.store import read_only
from contracts._tables import negotiations
from contracts._transfer_states import TState
from metering import UsageEvent
from metering._usage import CATEGORIES

__all__ = ["consumer_fetch_router"]

#: headers of the provider's answer passed on to the caller
PASSED_ON = ("content-type", "content-length", "content-range", "accept-ranges", "cache-control")
#: the most of a provider's error body passed on
ERROR_BODY = 64 * 1024


def consumer_fetch_router(
    engine: Engine,
    edr: EdrRefresher,
    read_dependency: Callable[..., Any],
    *,
    consumer_did: str,
    record: Callable[[Sequence[UsageEvent]], Any],
    http: httpx.AsyncClient | None = None,
) -> APIRouter:
    """The consumer's fetch route (mount under the management path). ``record(events)`` stores
    usage events metered on this side (the data bank's usage table)."""
    from contracts._transfer import transfers

    router = APIRouter(tags=["transfers"])
    client = http or httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))

    def _transfer(tid: str) -> dict[str, Any]:
        """The consumer transfer ``tid``, with ``dataset_id`` filled from its agreement's target."""
        with read_only(engine) as conn:
            row = conn.execute(sa.select(transfers).where(transfers.c.id == tid)).mappings().first()
            if row is None or row["role"] != "consumer":
                raise NotFoundError(f"no consumer transfer {tid!r}")
            if row["format"] != "HttpData-PULL" or row["state"] != TState.STARTED:
                raise ConflictError(
                    f"transfer {tid} cannot be fetched now: it is not a started HttpData-PULL transfer",
                    context={"state": TState(row["state"]).name, "format": row["format"]},
                )
            found = dict(row)
            if not found["dataset_id"]:
                found["dataset_id"] = conn.execute(
                    sa.select(negotiations.c.dataset_id).where(
                        negotiations.c.agreement_id == row["agreement_id"]
                    )
                ).scalar()
        return found

    async def fetch(tid: str, request: Request, path: str = "") -> Response:
        row = await asyncio.to_thread(_transfer, tid)
        request_id = (request.headers.get("x-request-id") or str(uuid.uuid4()))[:200]
        view = await asyncio.to_thread(edr.edr, tid)
        upstream = await _send(view, path, request, request_id)
        if upstream.status_code == 401 and view.get("refreshable"):  # expired meanwhile: refresh once
            await upstream.aclose()
            view = await asyncio.to_thread(edr.edr, tid, force=True)
            upstream = await _send(view, path, request, request_id)
        headers = {k: v for k, v in upstream.headers.items() if k.lower() in PASSED_ON}
        headers["X-Request-Id"] = request_id
        if upstream.status_code >= 300:
            try:
                body = await _read_some(upstream, ERROR_BODY)
            finally:
                await upstream.aclose()
            headers.pop("content-length", None)
            return Response(body, status_code=upstream.status_code, headers=headers)
        media_type = upstream.headers.get("content-type", "application/octet-stream")
        counter = RecordCounter(media_type)
        category = upstream.headers.get("x-dadam-category", "")
        started = time.time()

        def event(received: int, outcome: str) -> UsageEvent:
            provider_pid = str(row["provider_pid"] or "")
            return UsageEvent(
                id=f"{provider_pid}:{request_id}", agreement_id=row["agreement_id"], transfer_id=provider_pid,
                dataset_id=row["dataset_id"] or "", category=category if category in CATEGORIES else "other",
                bytes=received, records=counter.total(), calls=1, started_at=started, ended_at=time.time(),
                outcome=outcome, consumer=consumer_did, provider=row["counterparty_id"] or "",
            )  # fmt: skip

        async def relayed() -> AsyncIterator[bytes]:
            """The provider's answer as it arrives; metered once it has all arrived, before its
            last piece goes on (as the provider does), so a caller that has the whole body can
            rely on the event being there. Cut off midway: ``partial``."""
            received = 0
            recorded = False
            try:
                held: bytes | None = None
                async for chunk in upstream.aiter_raw():
                    received += len(chunk)
                    counter.feed(chunk)
                    if held is not None:
                        yield held
                    held = chunk
                await asyncio.to_thread(record, [event(received, "ok")])
                recorded = True
                if held is not None:
                    yield held
            finally:
                await upstream.aclose()
                if not recorded:
                    await asyncio.to_thread(record, [event(received, "partial")])

        return StreamingResponse(relayed(), status_code=upstream.status_code, headers=headers)

    async def _send(view: dict[str, Any], path: str, request: Request, request_id: str) -> httpx.Response:
        url = str(view["endpoint"]).rstrip("/") + (f"/{path.lstrip('/')}" if path else "")
        if request.url.query:
            url += f"?{request.url.query}"
        token = str(view.get("authorization") or "")
        headers = {"X-Request-Id": request_id, "Accept-Encoding": "identity",
                   "Authorization": token if token.lower().startswith("bearer ") else f"Bearer {token}"}  # fmt: skip
        if request.headers.get("range"):
            headers["Range"] = request.headers["range"]
        try:
            return await client.send(client.build_request("GET", url, headers=headers), stream=True)
        except httpx.HTTPError as exc:
            raise TransportError(
                f"the provider's data plane is unreachable: {exc.__class__.__name__}"
            ) from None

    router.add_api_route(
        "/transfers/{tid}/data", fetch, methods=["GET"], dependencies=[Depends(read_dependency)]
    )
    router.add_api_route(
        "/transfers/{tid}/data/{path:path}", fetch, methods=["GET"], dependencies=[Depends(read_dependency)]
    )
    return router


async def _read_some(response: httpx.Response, limit: int) -> bytes:
    out = bytearray()
    async for chunk in response.aiter_raw():
        out += chunk[: limit - len(out)]
        if len(out) >= limit:
            break
    return bytes(out)
