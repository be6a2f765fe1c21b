"""HTTP edges of the transfer process: DSP endpoints (both roles) and the management API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response

from connector.errors import ValidationError
from connector.identity import Caller
from contracts._transfer import TransferManager
from contracts._transfer_states import Command

__all__ = ["transfer_dsp_router", "transfer_management_router"]


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationError("request body is not JSON", errors=[str(exc)]) from None


def _respond(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def transfer_dsp_router(manager: TransferManager, caller_dependency: Callable[..., Any]) -> APIRouter:
    """``/transfers/request``, ``/transfers/{pid}`` (GET, both roles: the TCK reads the consumer's
    too) and ``/transfers/{pid}/start|suspension|completion|termination``."""
    router = APIRouter(tags=["dsp-transfer"])

    @router.post("/transfers/request")
    async def request_transfer(request: Request, caller: Caller = Depends(caller_dependency)) -> Response:
        body = await _json(request)
        return _respond(await asyncio.to_thread(manager.provider_request, body, caller), 201)

    @router.get("/transfers/{pid}")
    async def get_transfer(pid: str, caller: Caller = Depends(caller_dependency)) -> Response:
        return _respond(await asyncio.to_thread(manager.dsp_get, pid, caller))

    def _post(endpoint: str) -> Callable[..., Any]:
        async def handler(
            pid: str, request: Request, caller: Caller = Depends(caller_dependency)
        ) -> Response:
            body = await _json(request)
            return _respond(await asyncio.to_thread(manager.receive, endpoint, pid, body, caller))

        return handler

    for endpoint in ("start", "suspension", "completion", "termination"):
        router.add_api_route(f"/transfers/{{pid}}/{endpoint}", _post(endpoint), methods=["POST"])
    return router


def transfer_management_router(
    manager: TransferManager,
    read_dep: Callable[..., Any],
    write_dep: Callable[..., Any],
    *,
    destination_for: Callable[[str, dict[str, Any] | None], Callable[[str], dict[str, Any]] | None]
    | None = None,
    edr: Any = None,
) -> APIRouter:
    """Start, list, read and steer transfers; the EDR is in ``dataAddress`` once STARTED, and at
    ``/transfers/{id}/edr`` (refreshed before it expires when ``edr`` is an EdrRefresher).

    ``destination_for(format, dataDestination)`` builds the push destination of a consumer request.
    """
    router = APIRouter(tags=["transfers"])

    @router.post("/transfers", status_code=201, dependencies=[Depends(write_dep)])
    async def start(request: Request) -> Response:
        body = await _json(request)
        if not isinstance(body, dict):
            raise ValidationError("body must be an object")
        problems = [f"{k}: required" for k in ("counterPartyAddress", "agreementId") if not body.get(k)]
        requested = body.get("dataDestination")
        if requested is not None and not isinstance(requested, dict):
            problems.append("dataDestination: an object")
        if problems:
            raise ValidationError("cannot start a transfer", errors=problems)
        fmt = str(body.get("format") or "HttpData-PULL")
        view = await asyncio.to_thread(
            manager.start_transfer,
            str(body["counterPartyAddress"]),
            str(body["agreementId"]),
            fmt=fmt,
            counterparty_id=body.get("counterPartyId"),
            destination=destination_for(fmt, requested) if destination_for else None,
        )
        return _respond(view, 201)

    @router.post("/agreements/{agreement_id}/retire", dependencies=[Depends(write_dep)])
    async def retire(agreement_id: str, request: Request) -> Response:
        """Retire an agreement: data requests are refused and live transfers terminated with the reason."""
        raw = await request.body()
        body = orjson.loads(raw) if raw else {}
        reason = str(body.get("reason") or "retired by the provider") if isinstance(body, dict) else "retired"
        return _respond(await asyncio.to_thread(manager.retire_agreement, agreement_id, reason))

    @router.get("/transfers", dependencies=[Depends(read_dep)])
    async def list_all(offset: int = 0, limit: int = 50) -> Response:
        if offset < 0 or not 1 <= limit <= 1000:
            raise ValidationError("bad paging", errors=["offset >= 0, 1 <= limit <= 1000"])
        return _respond(
            {"items": await asyncio.to_thread(manager.list_transfers, offset=offset, limit=limit)}
        )

    @router.get("/transfers/{tid}", dependencies=[Depends(read_dep)])
    async def get_one(tid: str) -> Response:
        return _respond(await asyncio.to_thread(manager.get, tid))

    @router.get("/transfers/{tid}/edr", dependencies=[Depends(read_dep)])
    async def get_edr(tid: str) -> Response:
        """The EDR of a started pull transfer, refreshed first when it expires within a minute."""
        if edr is None:
            raise ValidationError("this connector hands out no EDRs")
        return _respond(await asyncio.to_thread(edr.edr, tid))

    @router.post("/transfers/{tid}/edr/refresh", dependencies=[Depends(write_dep)])
    async def refresh_edr(tid: str) -> Response:
        """Refresh the EDR now (the current token stays valid if the provider does not answer)."""
        if edr is None:
            raise ValidationError("this connector hands out no EDRs")
        return _respond(await asyncio.to_thread(edr.edr, tid, force=True))

    @router.post("/transfers/{tid}/{action}", dependencies=[Depends(write_dep)])
    async def steer(tid: str, action: str, request: Request) -> Response:
        try:
            cmd = Command(action)
        except ValueError:
            raise ValidationError(
                f"unknown action {action!r}", errors=["action: suspend, resume, complete or terminate"]
            ) from None
        raw = await request.body()
        body = orjson.loads(raw) if raw else {}
        reason = str(body.get("reason")) if isinstance(body, dict) and body.get("reason") else None
        return _respond(await asyncio.to_thread(manager.run_command, tid, cmd, reason))

    return router
