"""Management routes that act as a DSP consumer: read a partner's catalog.

* ``POST <management>/catalog/request`` ``{"counterPartyAddress", "counterPartyId"?, "filter"?, "allPages"?}``
  → the partner's Catalog (compact DSP JSON as received; with ``allPages`` every page merged).
* ``POST <management>/catalog/dataset/request`` ``{"counterPartyAddress", "counterPartyId"?, "datasetId"}``
  → the partner's Dataset.

``counterPartyAddress`` is the partner's DSP base URL (its DataService ``endpointURL``);
``counterPartyId`` its DID (default: the did:web a dadam peer derives from its address).
Failures keep the partner's reasons: 502 when it cannot be reached or answers 5xx, 400 when it
refuses (with its CatalogError reasons), 422 for a bad request body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from connector._dsp_client import DspClient, peer_did_for_address

__all__ = ["CatalogQuery", "DatasetQuery", "remote_catalog_router"]


class CatalogQuery(BaseModel):
    """Ask a partner for its catalog."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    counter_party_address: str = Field(alias="counterPartyAddress", min_length=8)
    counter_party_id: str | None = Field(None, alias="counterPartyId")
    filter: list[Any] | None = None
    all_pages: bool = Field(False, alias="allPages")


class DatasetQuery(BaseModel):
    """Ask a partner for one dataset."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    counter_party_address: str = Field(alias="counterPartyAddress", min_length=8)
    counter_party_id: str | None = Field(None, alias="counterPartyId")
    dataset_id: str = Field(alias="datasetId", min_length=1)


def remote_catalog_router(client: DspClient, require_read: Callable[..., Any]) -> APIRouter:
    """Routes to fetch partners' catalogs through ``client`` (mount under the management prefix)."""
    router = APIRouter(tags=["partner catalogs"], dependencies=[Depends(require_read)])

    @router.post("/catalog/request", summary="Fetch a partner's catalog over DSP")
    async def request_catalog(query: CatalogQuery) -> dict[str, Any]:
        peer = query.counter_party_id or peer_did_for_address(query.counter_party_address)
        if query.all_pages:
            return await client.catalog_all(query.counter_party_address, peer, filter=query.filter)
        body, _next = await client.catalog(query.counter_party_address, peer, filter=query.filter)
        return body

    @router.post("/catalog/dataset/request", summary="Fetch one dataset of a partner over DSP")
    async def request_dataset(query: DatasetQuery) -> dict[str, Any]:
        peer = query.counter_party_id or peer_did_for_address(query.counter_party_address)
        return await client.dataset(query.counter_party_address, peer, query.dataset_id)

    return router
