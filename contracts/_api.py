"""HTTP edges of contract negotiation: the DSP endpoints and the management API (FastAPI routers).

The routers are factories so the application decides prefixes and authentication:

* :func:`negotiation_dsp_router` (mount under the DSP base, e.g. ``/api/dsp/2025-1``) serves the
  provider endpoints and the consumer callback endpoints (our ``callbackAddress`` is the DSP base,
  so both roles share ``/negotiations/{pid}/events`` and ``/termination``: the pid decides).
  Errors are :class:`~connector.errors.DadamError` subclasses carrying ``providerPid`` /
  ``consumerPid`` in their context; the app's error handlers render them as
  ``ContractNegotiationError`` (400 invalid message or transition, 404 unknown or not yours).
* :func:`negotiation_management_router` (mount under the management base) starts (as consumer,
  or as provider with ``POST /negotiations/offers``), lists, reads, terminates, approves, accepts,
  rejects and counter-offers negotiations, exports agreements, and streams state changes as
  server-sent events (``GET /negotiations/events``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson
from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from connector.api._fastlane import FastRoute, Handler
from connector.errors import ValidationError
from connector.identity import Caller
from contracts._manager import EventFilter, NegotiationManager
from contracts._negotiation_states import Role

__all__ = [
    "negotiation_dsp_router",
    "negotiation_fast_routes",
    "negotiation_management_fast_routes",
    "negotiation_management_router",
]

#: ``defer(fn)``: run ``fn`` after the reply (the ACK) went out.
Defer = Callable[[Callable[[], None]], None]


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationError("request body is not JSON", errors=[str(exc)]) from None


def _sse(ev: dict[str, Any]) -> bytes:
    return b"event: negotiation\ndata: " + orjson.dumps(ev) + b"\n\n"


def _respond(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _call(fn: Callable[[], None]) -> None:
    fn()


def _after_response(tasks: BackgroundTasks) -> Callable[[Callable[[], None]], None]:
    """The manager's ``defer``: run ``fn`` after the response (the ACK) went out. ``fn`` only hands
    claimed messages to the worker's send pool and wakes the worker (nothing blocks), so it runs on
    the event loop: as a sync background task Starlette would first move it to a worker thread."""

    def defer(fn: Callable[[], None]) -> None:
        tasks.add_task(_call, fn)

    return defer


#: The DSP POST endpoints of a negotiation with a pid: endpoint name and the role it addresses
#: (None: either, the pid decides).
_PID_POSTS: list[tuple[str, str, Role | None]] = [
    ("/negotiations/{pid}/request", "request", Role.PROVIDER),
    ("/negotiations/{pid}/agreement/verification", "verification", Role.PROVIDER),
    ("/negotiations/{pid}/offers", "offers", Role.CONSUMER),
    ("/negotiations/{pid}/agreement", "agreement", Role.CONSUMER),
    ("/negotiations/{pid}/events", "events", None),
    ("/negotiations/{pid}/termination", "termination", None),
]


def _pid_post(manager: NegotiationManager, endpoint: str, role: Role | None) -> Handler:
    def handle(params: Mapping[str, str], body: Any, caller: Any, defer: Defer) -> tuple[int, Any]:
        pid = params["pid"]
        return 200, manager.receive(role or manager.role_of(pid), endpoint, pid, body, caller, defer)

    return handle


def negotiation_fast_routes(manager: NegotiationManager) -> list[FastRoute]:
    """The DSP POST endpoints of :func:`negotiation_dsp_router` for :class:`~connector.api.DspFastLane`
    (decision 0405): the same handlers, without FastAPI's request path. Every handler runs in a
    worker thread; what it defers (the reply to the peer) runs after the ACK went out."""

    def initial_request(params: Mapping[str, str], body: Any, caller: Any, defer: Defer) -> tuple[int, Any]:
        return 201, manager.provider_request(body, caller, defer)

    def initial_offer(params: Mapping[str, str], body: Any, caller: Any, defer: Defer) -> tuple[int, Any]:
        return 201, manager.consumer_initial_offer(body, caller, defer)

    return [
        # provider_request records the token id with the new row (on PostgreSQL in its statement)
        FastRoute("/negotiations/request", initial_request, records_token=True),
        FastRoute("/negotiations/offers", initial_offer),
        # manager.receive records the token id, on PostgreSQL in the statement reading the row
        *(
            FastRoute(path, _pid_post(manager, endpoint, role), records_token=True)
            for path, endpoint, role in _PID_POSTS
        ),
    ]


def _start(manager: NegotiationManager, body: Any) -> dict[str, Any]:
    """``POST /negotiations`` of the management API (blocking)."""
    if not isinstance(body, dict):
        raise ValidationError("body must be an object")
    address = body.get("counterPartyAddress")
    if not isinstance(address, str) or not address.startswith(("http://", "https://")):
        raise ValidationError("counterPartyAddress required", errors=["counterPartyAddress: http(s) URL"])
    callbacks = body.get("callbackAddresses") or []
    if not isinstance(callbacks, list) or not all(isinstance(c, str) for c in callbacks):
        raise ValidationError("callbackAddresses must be a list of URLs")
    offer = body.get("offer") or body.get("policy")
    if offer is not None and not isinstance(offer, dict):
        raise ValidationError("offer must be an object")
    return manager.start_negotiation(
        address,
        offer_id=body.get("offerId"),
        offer=offer,
        dataset_id=body.get("datasetId"),
        counterparty_id=body.get("counterPartyId"),
        callbacks=callbacks,
    )


def negotiation_management_fast_routes(manager: NegotiationManager) -> list[FastRoute]:
    """``POST /negotiations`` (start a negotiation) of :func:`negotiation_management_router` for a
    :class:`~connector.api.DspFastLane` under the management path (decision 0409): the same
    handler, without FastAPI's request path."""

    def start(params: Mapping[str, str], body: Any, caller: Any, defer: Defer) -> tuple[int, Any]:
        return 201, _start(manager, body)

    return [FastRoute("/negotiations", start)]


def negotiation_dsp_router(manager: NegotiationManager, caller_dependency: Callable[..., Any]) -> APIRouter:
    """DSP 2025-1 contract negotiation endpoints (provider and consumer callbacks).

    The POST endpoints call the handlers of :func:`negotiation_fast_routes`; an app that puts
    :class:`~connector.api.DspFastLane` in front serves them there without this router."""
    router = APIRouter(tags=["dsp-negotiation"])
    fast = {r.path: r.handler for r in negotiation_fast_routes(manager)}

    @router.post("/negotiations/request")
    async def initial_request(
        request: Request, tasks: BackgroundTasks, caller: Caller = Depends(caller_dependency)
    ) -> Response:
        body = await _json(request)
        # Replies are sent after this response (the ACK) went out.
        handler = fast["/negotiations/request"]
        status, ack = await asyncio.to_thread(handler, {}, body, caller, _after_response(tasks))
        return _respond(ack, status)

    @router.post("/negotiations/offers")
    async def initial_offer(
        request: Request, tasks: BackgroundTasks, caller: Caller = Depends(caller_dependency)
    ) -> Response:
        """Consumer: a provider-initiated negotiation (initial ContractOfferMessage)."""
        body = await _json(request)
        handler = fast["/negotiations/offers"]
        status, ack = await asyncio.to_thread(handler, {}, body, caller, _after_response(tasks))
        return _respond(ack, status)

    @router.get("/negotiations/{pid}")
    async def get_negotiation(pid: str, caller: Caller = Depends(caller_dependency)) -> Response:
        def work() -> dict[str, Any]:
            return manager.dsp_get(manager.role_of(pid), pid, caller)

        return _respond(await asyncio.to_thread(work))

    def _post(handle: Handler) -> Callable[..., Any]:
        async def endpoint(
            pid: str, request: Request, tasks: BackgroundTasks, caller: Caller = Depends(caller_dependency)
        ) -> Response:
            body = await _json(request)
            status, ack = await asyncio.to_thread(handle, {"pid": pid}, body, caller, _after_response(tasks))
            return _respond(ack, status)

        return endpoint

    for path, _endpoint, _role in _PID_POSTS:
        router.add_api_route(path, _post(fast[path]), methods=["POST"])
    return router


def negotiation_management_router(
    manager: NegotiationManager, read_dep: Callable[..., Any], write_dep: Callable[..., Any]
) -> APIRouter:
    """Management API for negotiations (JSON in and out, no JSON-LD)."""
    router = APIRouter(tags=["negotiations"])

    @router.post("/negotiations", status_code=201, dependencies=[Depends(write_dep)])
    async def start(request: Request) -> Response:
        body = await _json(request)
        return _respond(await asyncio.to_thread(_start, manager, body), 201)

    @router.post("/negotiations/offers", status_code=201, dependencies=[Depends(write_dep)])
    async def offer(request: Request) -> Response:
        """Provider: start a negotiation by offering one of our catalog's offers to a consumer."""
        body = await _json(request)
        if not isinstance(body, dict):
            raise ValidationError("body must be an object")
        errors = []
        address = body.get("counterPartyAddress")
        if not isinstance(address, str) or not address.startswith(("http://", "https://")):
            errors.append("counterPartyAddress: the consumer's DSP base URL (http(s))")
        for key in ("counterPartyId", "offerId"):
            if not isinstance(body.get(key), str) or not body[key]:
                errors.append(f"{key}: required")
        callbacks = body.get("callbackAddresses") or []
        if not isinstance(callbacks, list) or not all(isinstance(c, str) for c in callbacks):
            errors.append("callbackAddresses: a list of URLs")
        if errors:
            raise ValidationError("cannot offer", errors=errors)

        def work() -> dict[str, Any]:
            return manager.offer_negotiation(
                str(address),
                offer_id=body["offerId"],
                counterparty_id=body["counterPartyId"],
                callbacks=callbacks,
            )

        return _respond(await asyncio.to_thread(work), 201)

    @router.get("/negotiations", dependencies=[Depends(read_dep)])
    def list_all(
        offset: int = 0,
        limit: int = 50,
        state: str | None = None,
        role: str | None = None,
        pending: bool | None = None,
    ) -> Response:
        if offset < 0 or not 1 <= limit <= 1000:
            raise ValidationError("bad paging", errors=["offset >= 0, 1 <= limit <= 1000"])
        items = manager.list_negotiations(offset=offset, limit=limit, state=state, role=role, pending=pending)
        return _respond({"items": items, "offset": offset, "limit": limit})

    @router.get("/negotiations/events", dependencies=[Depends(read_dep)])
    async def events(
        request: Request,
        state: list[str] = Query(
            [], description="only events showing these states (repeat or comma-separate)"
        ),
        role: list[str] = Query([], description="only negotiations where we play this role"),
        id: list[str] = Query([], description="only these negotiations"),
    ) -> StreamingResponse:
        wanted = EventFilter.parse(states=state, roles=role, ids=id)
        queue = manager.subscribe(wanted)

        async def stream() -> AsyncIterator[bytes]:
            # StreamingResponse watches for the client going away and cancels this generator;
            # the explicit check only runs when the stream is idle. Events that queued up while
            # the previous chunk was written go out together in one chunk.
            try:
                yield b": connected\n\n"
                while True:
                    try:
                        async with asyncio.timeout(15):
                            ev = await queue.get()
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield b": keep-alive\n\n"
                        continue
                    chunk = [_sse(ev)]
                    while len(chunk) < 256 and not queue.empty():
                        chunk.append(_sse(queue.get_nowait()))
                    yield b"".join(chunk)
            finally:
                manager.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream")

    @router.get("/negotiations/{nid}", dependencies=[Depends(read_dep)])
    def get_one(nid: str) -> Response:
        return _respond(manager.get(nid))

    @router.post("/negotiations/{nid}/terminate", dependencies=[Depends(write_dep)])
    async def terminate(nid: str, request: Request) -> Response:
        raw = await request.body()
        body = orjson.loads(raw) if raw else {}
        reason = str(body.get("reason") or "no reason given") if isinstance(body, dict) else "no reason given"
        return _respond(await asyncio.to_thread(manager.terminate, nid, reason))

    @router.post("/negotiations/{nid}/approve", dependencies=[Depends(write_dep)])
    def approve(nid: str) -> Response:
        return _respond(manager.approve(nid))

    @router.post("/negotiations/{nid}/accept", dependencies=[Depends(write_dep)])
    def accept(nid: str) -> Response:
        return _respond(manager.accept(nid))

    @router.post("/negotiations/{nid}/reject", dependencies=[Depends(write_dep)])
    async def reject(nid: str, request: Request) -> Response:
        body = await _json(request)
        reason = body.get("reason") if isinstance(body, dict) else None
        if not isinstance(reason, str) or not reason.strip():
            raise ValidationError("a reason is required", errors=["reason: non-empty text for the peer"])
        return _respond(await asyncio.to_thread(manager.reject, nid, reason))

    @router.post("/negotiations/{nid}/counter-offer", dependencies=[Depends(write_dep)])
    async def counter(nid: str, request: Request) -> Response:
        body = await _json(request)
        offer = body.get("offer") if isinstance(body, dict) else None
        if not isinstance(offer, dict):
            raise ValidationError("offer required", errors=["offer: object with rules"])
        return _respond(await asyncio.to_thread(manager.counter_offer, nid, offer))

    @router.get("/negotiations/{nid}/agreement", dependencies=[Depends(read_dep)])
    def agreement(nid: str) -> Response:
        return _respond(manager.export(nid))

    return router
