"""DSP TCK conformance scripts for transfer processes (test-only: only ``dadam conformance serve``).

Seeds the agreements the TCK's TP tests use (``ATP0101`` ... ``ATP0306``, provider side, on dataset
CAT0101) and maps agreement ids to the scripted reactions of ``docs/dsp-conformance.md`` §5:
provider scripts run on the TCK's TransferRequestMessage, consumer scripts (``ATPC...``) on a
received TransferStartMessage or after our request was acknowledged. Also the transfer initiate
webhook ``POST <I_T>`` ``{providerId, agreementId, format, connectorAddress}``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from sqlalchemy.engine import Engine

from connector.errors import ValidationError
from contracts._negotiation_states import State
from contracts._tables import negotiations
from contracts._transfer import TransferManager
from contracts._transfer_states import Command

__all__ = [
    "CONSUMER_TP_SCRIPTS",
    "PROVIDER_TP_SCRIPTS",
    "seed_agreements",
    "tp_script_for",
    "transfer_initiate_router",
]

S, U, R, C, T = Command.START, Command.SUSPEND, Command.RESUME, Command.COMPLETE, Command.TERMINATE

# fmt: off
PROVIDER_TP_SCRIPTS: dict[str, dict[str, list[Command]]] = {
    "ATP0101": {"request": [S, T]}, "ATP0102": {"request": [S, C]}, "ATP0103": {"request": [S, U, T]},
    "ATP0104": {"request": [S, U, R, C]}, "ATP0105": {"request": [T]},
    "ATP0201": {"request": [S]}, "ATP0202": {"request": [S]}, "ATP0203": {"request": [S]}, "ATP0204": {"request": [S]},
    "ATP0205": {}, "ATP0301": {}, "ATP0302": {},
    "ATP0303": {"request": [S]}, "ATP0304": {"request": [S]}, "ATP0305": {"request": [S]}, "ATP0306": {"request": [S]},
}
CONSUMER_TP_SCRIPTS: dict[str, dict[str, list[Command]]] = {
    "ATPC0201": {"start": [T]}, "ATPC0202": {"start": [C]}, "ATPC0203": {"start": [U, T]},
    "ATPC0204": {"start": [U, R, C]}, "ATPC0205": {"ack:request": [T]},
}
# fmt: on


def tp_script_for(agreement_id: str) -> dict[str, list[Command]] | None:
    """The script of a seeded agreement id (an empty script means: react to nothing), else None."""
    if agreement_id in PROVIDER_TP_SCRIPTS:
        return PROVIDER_TP_SCRIPTS[agreement_id]
    if agreement_id.startswith("ATPC"):
        return CONSUMER_TP_SCRIPTS.get(agreement_id, {})
    return None


def seed_agreements(engine: Engine, participant_id: str, dataset_id: str = "CAT0101") -> None:
    """Concluded (FINALIZED) provider-side agreements for every ATP id; existing ones are left alone."""
    now = time.time()
    with engine.begin() as conn:
        have = set(conn.execute(sa.select(negotiations.c.agreement_id)).scalars())
        rows = []
        for aid in PROVIDER_TP_SCRIPTS:
            if aid in have:
                continue
            agreement = {"@id": aid, "@type": "Agreement", "target": dataset_id, "assigner": participant_id,
                         "assignee": "TCK_PARTICIPANT", "permission": [{"action": "use"}]}  # fmt: skip
            rows.append({
                "id": f"urn:uuid:seed-{aid}", "state": int(State.FINALIZED), "state_since": now, "deadline": None,
                "pending": False, "version": 0, "error_detail": None, "created_at": now, "updated_at": now,
                "role": "provider", "provider_pid": f"urn:uuid:seed-{aid}", "consumer_pid": f"seed-{aid}",
                "counterparty_address": "http://tck.invalid", "counterparty_id": None, "offer_id": None,
                "dataset_id": dataset_id, "offer": None, "offer_by": None, "agreement_id": aid,
                "agreement": orjson.dumps(agreement).decode(), "provider_signature": None,
                "consumer_signature": None, "callbacks": None, "extra": None,
            })  # fmt: skip
        if rows:
            conn.execute(negotiations.insert(), rows)


def transfer_initiate_router(manager: TransferManager, path: str) -> APIRouter:
    """The TCK's transfer initiate webhook: request a transfer from ``connectorAddress``."""
    router = APIRouter(tags=["conformance"])

    @router.post(path)
    async def initiate(request: Request) -> Response:
        body: Any = orjson.loads(await request.body() or b"{}")
        missing = [k for k in ("providerId", "agreementId", "format", "connectorAddress") if not body.get(k)]
        if missing:
            raise ValidationError("incomplete initiate request", errors=[f"{k}: required" for k in missing])
        view = await asyncio.to_thread(
            manager.start_transfer,
            str(body["connectorAddress"]),
            str(body["agreementId"]),
            fmt=str(body["format"]),
            counterparty_id=str(body["providerId"]),
        )
        return Response(orjson.dumps(view), media_type="application/json")

    return router
