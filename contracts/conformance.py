"""DSP TCK conformance scripts for contract negotiation (test-only: never import from production paths).

The TCK has no trigger API: the connector under test must react on its own, per seeded dataset
id, exactly as ``docs/dsp-conformance.md`` §5 prescribes. This module maps the seed ids to those
scripts (``ACN0101``... when we are the provider, ``ACNC0101``... when we are the consumer), gives
an offer resolver for the seeded offers ``CD123:ACN0xyz:456`` and the negotiation initiate webhook
(``POST <I_N>`` with ``{providerId, offerId, datasetId, connectorAddress}``).

Only ``dadam conformance serve`` wires this in: build the manager with
``scripts=script_for``, ``offers=ConformanceOffers(real_resolver)``, ``reply_delay_s`` > 0 and
``script_delay_s`` ~ 0.5-1 s (the TCK registers its next handler late), and mount
:func:`initiate_router`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from connector.errors import NotFoundError, ValidationError
from connector.identity import Caller
from contracts._manager import NegotiationManager, OfferResolver

__all__ = [
    "CONSUMER_SCRIPTS",
    "PROVIDER_SCRIPTS",
    "ConformanceOffers",
    "initiate_router",
    "script_for",
]

# fmt: off
#: CUT = provider (dsp-conformance.md §5, "CUT script" column).
PROVIDER_SCRIPTS: dict[str, Mapping[str, Sequence[str]]] = {
    "ACN0101": {"request": ["offer"]},
    "ACN0102": {"request": ["offer"], "counter": ["terminate"]},
    "ACN0103": {"request": ["offer"], "accepted": ["agree"], "verification": ["finalize"]},
    "ACN0104": {"request": ["agree"], "verification": ["finalize"]},
    "ACN0201": {"request": ["terminate"]},
    "ACN0202": {},
    "ACN0203": {"request": ["agree"]},
    "ACN0204": {"request": ["offer"]},
    "ACN0205": {"request": ["offer", "terminate"]},
    "ACN0206": {"request": ["offer"], "accepted": ["terminate"]},
    "ACN0207": {"request": ["agree"], "verification": ["terminate"]},
    "ACN0301": {"request": ["agree"], "verification": ["finalize"]},
    "ACN0302": {"request": ["offer"]},
    "ACN0303": {"request": ["offer"], "accepted": ["nothing"]},
    "ACN0304": {"request": ["offer"], "counter": ["nothing"]},
}

#: CUT = consumer.
CONSUMER_SCRIPTS: dict[str, Mapping[str, Sequence[str]]] = {
    "ACNC0101": {"offer": ["accept"], "agreement": ["verify"]},
    "ACNC0102": {"offer": ["counter"]},
    "ACNC0103": {"offer": ["terminate"]},
    "ACNC0104": {"agreement": ["verify"]},
    "ACNC0201": {},
    "ACNC0202": {"ack:request": ["terminate"]},
    "ACNC0203": {"agreement": ["terminate"]},
    "ACNC0204": {"offer": ["nothing"]},
    "ACNC0205": {"offer": ["accept"]},
    "ACNC0206": {"agreement": ["verify"]},
    "ACNC0301": {},
    "ACNC0302": {"offer": ["nothing"]},
    "ACNC0303": {"offer": ["nothing"]},
    "ACNC0304": {"offer": ["accept"]},
    "ACNC0305": {"offer": ["accept"]},
    "ACNC0306": {"offer": ["accept"], "agreement": ["nothing"]},
}
# fmt: on


def script_for(dataset_id: str | None) -> Mapping[str, Sequence[str]] | None:
    """The script of a seeded dataset id, None for any other dataset (normal behaviour)."""
    if dataset_id is None:
        return None
    # An empty script ({}: "react to nothing") is a script too: don't let `or` turn it into None.
    if dataset_id in PROVIDER_SCRIPTS:
        return PROVIDER_SCRIPTS[dataset_id]
    return CONSUMER_SCRIPTS.get(dataset_id)


_SEEDED = re.compile(r"^CD123:(ACN0[1-3]0[1-7]):456$")


class ConformanceOffers:
    """Resolves the TCK's seeded offers ``CD123:ACN0xyz:456`` (open policy); delegates the rest."""

    def __init__(self, fallback: OfferResolver | None = None) -> None:
        self.fallback = fallback

    def resolve_offer(self, offer_id: str, caller: Caller) -> Any:
        m = _SEEDED.match(offer_id)
        if m and m.group(1) in PROVIDER_SCRIPTS:
            return SimpleNamespace(
                dataset=SimpleNamespace(id=m.group(1)),
                offer_policy_json={"@id": offer_id, "@type": "Offer", "permission": [{"action": "use"}]},
            )
        if self.fallback is None:
            raise NotFoundError(f"no offer {offer_id!r}")
        return self.fallback.resolve_offer(offer_id, caller)


def initiate_router(
    manager: NegotiationManager, path: str = "/negotiations/initiate", auth: Callable[..., Any] | None = None
) -> APIRouter:
    """The TCK's negotiation initiate webhook: start a consumer negotiation with the given ids.

    The TCK serves no catalog, so the offer is built from the ids (``offerId`` exactly as given,
    target ``datasetId``, permission ``use``) instead of being fetched.
    """
    router = APIRouter(tags=["conformance"])
    deps = [Depends(auth)] if auth is not None else []

    @router.post(path, dependencies=deps)
    async def initiate(request: Request) -> Response:
        body = await request.json()
        missing = [k for k in ("providerId", "offerId", "datasetId", "connectorAddress") if not body.get(k)]
        if missing:
            raise ValidationError("incomplete initiate request", errors=[f"{k}: required" for k in missing])
        offer = {
            "@id": body["offerId"],
            "@type": "Offer",
            "target": body["datasetId"],
            "permission": [{"action": "use"}],
        }

        def work() -> dict[str, Any]:
            return manager.start_negotiation(
                body["connectorAddress"],
                offer_id=body["offerId"],
                offer=offer,
                dataset_id=body["datasetId"],
                counterparty_id=body["providerId"],
            )

        view = await asyncio.to_thread(work)
        import orjson

        return Response(orjson.dumps(view), status_code=200, media_type="application/json")

    return router
